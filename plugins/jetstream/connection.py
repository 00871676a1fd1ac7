"""Connecting to a NATS cluster: what the ``nats`` sink and the ``jetstream`` source share.

Both take the same server options (``url`` as one URL or a list, ``user``,
``password``, ``token``, ``creds_file``, ``tls``, ``connect_timeout``,
``reconnect_wait``) and connect the same way: every URL of the list is a seed,
the client learns the rest of the cluster from the servers themselves, and it
reconnects on its own, forever, to whichever server answers. Checked here once:
:func:`check_servers` (the URLs) and :func:`connect_kwargs` (nats-py's
``connect()`` arguments, TLS context included).

Invariant: credentials never reach a log line; the servers are logged through
:func:`wsroute.net.redact_url` (:func:`servers_for_logs`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from structlog.typing import FilteringBoundLogger

from wsroute.net import check_url, redact_url
from wsroute.plugins.sinks import TlsSection, ssl_context

__all__ = ["ServerOptions", "check_servers", "connect_kwargs", "servers_for_logs"]

SCHEMES = ("nats://", "tls://", "ws://", "wss://")


class ServerOptions(Protocol):
    """The server options the ``nats`` sink and the ``jetstream`` source both have."""

    @property
    def url(self) -> str | list[str]: ...
    @property
    def user(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def token(self) -> str | None: ...
    @property
    def creds_file(self) -> str | None: ...
    @property
    def tls(self) -> TlsSection: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def reconnect_wait(self) -> float: ...


def servers_of(url: str | list[str]) -> list[str]:
    """``url`` as a list."""
    return [url] if isinstance(url, str) else list(url)


def check_servers(url: str | list[str]) -> list[str]:
    """The server URLs; ``ValueError`` (without the credentials) when one is not NATS's."""
    servers = servers_of(url)
    if not servers:
        raise ValueError("url must name at least one server")
    for server in servers:
        if not server.startswith(SCHEMES):
            raise ValueError(
                f"url must start with nats://, tls://, ws:// or wss://, got {redact_url(server)!r}"
            )
        check_url(server, (scheme.partition(":")[0] for scheme in SCHEMES))
    return servers


def servers_for_logs(url: str | list[str]) -> list[str]:
    """The server URLs with any password or token masked."""
    return [redact_url(s) for s in servers_of(url)]


def connect_kwargs(
    options: ServerOptions,
    *,
    name: str,
    log: FilteringBoundLogger,
    where: str,
    error_cb: Callable[[Exception], Awaitable[None]],
    disconnected_cb: Callable[[], Awaitable[None]],
    reconnected_cb: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    """nats-py ``Client.connect()`` arguments: every server, reconnecting forever.

    ``where`` is the options' key path (``handlers.NAME``, ``sources.NAME``), for
    a TLS file that cannot be loaded.
    """
    servers = servers_of(options.url)
    kwargs: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "error_cb": error_cb,
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,  # forever, the first connect included
        "reconnect_time_wait": cast(int, options.reconnect_wait),  # seconds; floats work
        "connect_timeout": cast(int, options.connect_timeout),
        "user": options.user,
        "password": options.password,
        "token": options.token,
    }
    if any(s.startswith(("tls://", "wss://")) for s in servers):
        kwargs["tls"] = ssl_context(options.tls, log, f"{where}.tls")
    if options.creds_file:
        kwargs["user_credentials"] = options.creds_file
    return kwargs
