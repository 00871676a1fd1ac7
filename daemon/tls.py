"""TLS client options and the context built from them: public, for connections and plugins.

A ``tls`` table (``connections.NAME.tls``, or a plugin's own ``tls`` option)
is a :class:`TlsOptions`; :func:`tls_context` turns it into an
``ssl.SSLContext``. A plugin that talks TLS declares ``tls: TlsOptions`` in its
``Options`` and gets the same keys, validation and errors as a connection.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field

from .exceptions import ConfigError, ConfigIssue

__all__ = ["TlsOptions", "tls_context"]


@dataclass
class TlsOptions:
    """A ``tls`` table: certificates for a TLS client (``wss://``, ``rediss://``, ...)."""

    ca_file: str = field(
        default="",
        metadata={"doc": "CA bundle to verify the server with (default: system store)."},
    )
    cert_file: str = field(default="", metadata={"doc": "Client certificate (PEM) for mutual TLS."})
    key_file: str = field(default="", metadata={"doc": "Private key of the client certificate."})
    verify: bool = field(
        default=True,
        metadata={"doc": "Verify the server certificate and host name. false is logged loudly."},
    )

    def __post_init__(self) -> None:
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file")


def tls_context(tls: TlsOptions, path: str = "tls") -> ssl.SSLContext:
    """A client TLS context for a ``tls`` table (connections and sinks alike).

    A file that cannot be loaded (deleted after ``wsroute check``, say) raises
    ConfigError with the key path under ``path`` (``connections.NAME.tls``).
    """
    key, file = "ca_file", tls.ca_file
    try:
        context = ssl.create_default_context(cafile=tls.ca_file or None)
        if tls.cert_file:
            key, file = "cert_file", tls.cert_file
            readable = os.access(tls.cert_file, os.R_OK)
            if readable and tls.key_file and not os.access(tls.key_file, os.R_OK):
                key, file = "key_file", tls.key_file
            context.load_cert_chain(tls.cert_file, tls.key_file or None)
    except OSError as exc:  # ssl.SSLError included: a file that is not PEM
        raise ConfigError(
            [ConfigIssue(f"{path}.{key}", f'cannot load "{file}": {exc.strerror or exc}')]
        ) from exc
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
