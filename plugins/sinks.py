"""Helpers the built-in sinks share, public for plugins that do the same: TLS options.

Part of the plugin API (docs/plugins.md): ``TlsSection`` is the ``tls = { ca_file,
cert_file, key_file, verify }`` option type (:class:`wsroute.tls.TlsOptions`),
:func:`ssl_context` its client context. A message as the flat fields of a
stream entry (Redis, or NATS headers plus payload) is
:func:`wsroute.plugins.redis.entry.encode_entry`.
"""

from __future__ import annotations

import ssl

from structlog.typing import FilteringBoundLogger

from wsroute.tls import TlsOptions as TlsSection
from wsroute.tls import tls_context

__all__ = ["TlsSection", "ssl_context"]


def ssl_context(tls: TlsSection, log: FilteringBoundLogger, path: str = "tls") -> ssl.SSLContext:
    """The client TLS context for ``tls = { ca_file, cert_file, key_file, verify }``.

    The same keys, with the same meaning, as a connection's ``tls`` table; turning
    ``verify`` off is logged as a warning, every time a sink starts. A file that
    cannot be loaded raises ConfigError with its key path under ``path``
    (``handlers.NAME.tls``).
    """
    context = tls_context(tls, path)
    if not tls.verify:
        log.warning("tls_verify_disabled")
    return context
