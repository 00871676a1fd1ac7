"""The API's listeners: one websockets server per ``[daemon.api] listen`` address.

Each answers plain HTTP ``GET /health``, ``/ready``, ``/metrics`` and
``/status`` from ``process_request`` and lets only ``/tap`` upgrade to a
WebSocket; any other path is 404.

Invariants: ``/status`` and ``/tap`` (message contents) are 403 on TCP
unless ``tap_over_tcp``. A Unix socket gets ``socket_mode`` before it
accepts anyone (bound, chmod-ed, then listening); a socket file already at
the path is removed only when nothing listens on it, and ours is removed at
stop. A change of ``listen`` opens the new addresses before it closes the old
ones, and an address that cannot be opened changes nothing: at start that is
exit 78 naming ``daemon.api.listen``, at a reload a failed reload.

No client holds the daemon (:mod:`.clients`): a request must arrive, and every
answer be written, within ``WRITE_TIMEOUT``; closing a listener (at a stop, or
a reload that no longer lists it) returns within the API's share of
``shutdown_timeout``, cutting off the clients that are still connected.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import http
import logging
import os
import socket
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import anyio
import msgspec
import structlog
from websockets.asyncio.server import Server, ServerConnection, serve, unix_serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..config import ApiSection, parse_listen
from ..exceptions import ConfigError, ConfigIssue
from ..snapshot import readiness, status
from .clients import WRITE_TIMEOUT, ApiConnection, Clients, stop_grace
from .tap import TapFilter, TapHub

if TYPE_CHECKING:
    from ..view import DaemonView
    from .metrics import Metrics

__all__ = ["ENDPOINTS", "ApiServer", "Listener"]

log = structlog.get_logger("wsroute.api")

#: The paths served; ``/tap`` is the WebSocket, the others plain GETs.
ENDPOINTS = ("/health", "/ready", "/metrics", "/status", "/tap")
#: Served on TCP only with ``tap_over_tcp``: they show message contents.
PRIVATE = frozenset({"/status", "/tap"})

_KEY = "daemon.api.listen"
# websockets logs every non-upgrade answer ("connection rejected") at INFO: one per scrape.
_http_logger = logging.getLogger("wsroute.api.http")
_http_logger.setLevel(logging.WARNING)
_json = msgspec.json.Encoder(enc_hook=str)


@dataclass
class Listener:
    """One open address: the server, and for a Unix socket its path and inode."""

    address: str
    server: Server
    clients: Clients
    path: str | None = None
    inode: int = 0

    @property
    def unix(self) -> bool:
        return self.path is not None

    def where(self) -> str:
        """Where it listens, as an address (a TCP port 0 shows the port it got)."""
        if self.path is not None:
            return f"unix:{self.path}"
        names = [sock.getsockname() for sock in self.server.sockets]
        return ", ".join(f"[{n[0]}]:{n[1]}" if ":" in n[0] else f"{n[0]}:{n[1]}" for n in names)

    async def close(self, grace: float) -> None:
        """Stop listening and close every client within ``grace`` seconds (then cut off)."""
        await self.clients.close(self.server, grace)
        if self.path is not None:
            _remove_ours(self.path, self.inode)
        log.info("api_closed", address=self.address)


class ApiServer:
    """``[daemon.api]``: every listener, the metrics registry and the tap hub.

    :meth:`start` at start, :meth:`stop` at shutdown; a reload calls
    :meth:`prepare` (opens what the new config adds, changes nothing else) and
    then :meth:`commit` (closes what it no longer lists) or, if the reload
    fails later on, :meth:`rollback` (closes what :meth:`prepare` opened).
    """

    @functools.cached_property
    def metrics(self) -> Metrics:
        """The Prometheus registry, built at the first scrape: a daemon without an API
        (or never scraped) does not import prometheus_client."""
        from .metrics import Metrics

        return Metrics(self.service)

    def __init__(self, service: DaemonView) -> None:
        self.service = service
        self.section = ApiSection()
        self.hub = TapHub(service)
        self.listeners: dict[str, Listener] = {}
        self._pending: dict[str, Listener] = {}
        self._pending_section: ApiSection | None = None
        # Addresses prepare() closed to make way for a new host on their port: reopened
        # by rollback() if the reload fails after all.
        self._displaced: list[str] = []

    # -- life ----------------------------------------------------------------

    async def start(self, section: ApiSection) -> None:
        """Open every address; ``ConfigError`` on ``daemon.api.listen`` if one cannot be."""
        problems = await self.prepare(section)
        if problems:  # each starts with the key already: said once on the exit-78 line
            issues = [ConfigIssue(_KEY, p.removeprefix(f"{_KEY}: ")) for p in problems]
            raise ConfigError(issues)
        await self.commit()

    async def prepare(self, section: ApiSection) -> list[str]:
        """Open the addresses ``section`` lists that are not open yet; nothing is closed.

        Returns the problems (each starting with ``daemon.api.listen``), after
        closing what it opened: the running listeners are untouched either way.
        """
        await self.rollback()
        opened: dict[str, Listener] = {}
        self._pending_section = section
        for address in dict.fromkeys(section.listen):
            if address in self.listeners:
                continue
            try:
                opened[address] = await self._open_making_way(address, section)
            except (OSError, ValueError) as exc:
                self._pending = opened
                await self.rollback()
                return [f"{_KEY}: cannot listen on {address}: {_reason(exc)}"]
        self._pending = opened
        return []

    async def _open_making_way(self, address: str, section: ApiSection) -> Listener:
        """Open ``address``; if its port is taken by one of ours on another host that
        ``section`` no longer lists (127.0.0.1:P becoming 0.0.0.0:P), close that one
        first. Raises what opening raised; :meth:`rollback` reopens what was closed."""
        try:
            return await self._open(address, section.mode)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            port = _tcp_port(address)
            olds = [
                old
                for old in self.listeners
                if old not in section.listen and port is not None and _tcp_port(old) == port
            ]
            if not olds:
                raise
        for old in olds:
            await self.listeners.pop(old).close(self.grace)
            self._displaced.append(old)
            log.info("api_moving", address=old, to=address)
        return await self._open(address, section.mode)

    async def commit(self) -> None:
        """Apply what :meth:`prepare` prepared: close the addresses no longer listed."""
        section = self._pending_section
        if section is None:
            return
        opened, self._pending, self._pending_section = self._pending, {}, None
        self._displaced = []
        gone = [a for a in self.listeners if a not in section.listen]
        old, self.section = self.section, section
        if section.mode != old.mode:
            for address, listener in self.listeners.items():
                if listener.path is not None and address not in gone:
                    _set_mode(listener.path, listener.inode, section.mode)
        self.hub.set_limit(section.tap_buffer)
        self.listeners.update(opened)
        for address in gone:  # their clients too: a tap there must not hold the reload
            await self.listeners.pop(address).close(self.grace)
        if not section.tap_over_tcp:  # taps already open on TCP end too
            await self.hub.close_tcp(self.grace)
        for listener in opened.values():
            log.info("api_listening", address=listener.address, listening=listener.where())

    async def rollback(self) -> None:
        """Close what :meth:`prepare` opened (a reload that failed after it), and reopen
        what it closed to make way."""
        opened, self._pending, self._pending_section = self._pending, {}, None
        displaced, self._displaced = self._displaced, []
        for listener in opened.values():
            await listener.close(self.grace)
        for address in displaced:
            try:
                self.listeners[address] = await self._open(address, self.section.mode)
            except (OSError, ValueError) as exc:
                log.error("api_restore_failed", address=address, error=_reason(exc))
            else:
                log.info("api_restored", address=address)

    async def stop(self) -> None:
        """Close every listener and every client, remove the Unix sockets.

        Returns within the API's share of ``shutdown_timeout`` (:func:`stop_grace`),
        whatever the clients do: the listeners close side by side, and a client
        still connected at the end of the grace is cut off.
        """
        await self.rollback()
        listeners, self.listeners = self.listeners, {}
        async with anyio.create_task_group() as tg:
            for listener in listeners.values():
                tg.start_soon(listener.close, self.grace)

    @property
    def grace(self) -> float:
        """How long clients get to close when their listener closes."""
        return stop_grace(self.service.config.daemon.shutdown_timeout)

    @property
    def addresses(self) -> list[str]:
        """The addresses open now, in the order they were opened."""
        return list(self.listeners)

    # -- opening -------------------------------------------------------------

    async def _open(self, address: str, mode: int) -> Listener:
        kind, where = parse_listen(address)
        clients = Clients(address, lambda: self.open_clients > 2 * self.section.max_clients)
        options: dict[str, Any] = {
            "compression": None,
            "max_size": 2**16,  # a tap client has nothing to say
            "logger": _http_logger,
            # A request that does not arrive, or an answer the client does not read,
            # within the deadline: the connection is dropped.
            "open_timeout": WRITE_TIMEOUT,
            "close_timeout": WRITE_TIMEOUT,
            "create_connection": clients.connection_class(),
        }
        if kind == "unix":
            assert isinstance(where, str)
            sock, inode = _bind_unix(where, mode)
            try:
                server = await unix_serve(
                    functools.partial(self._tap, unix=True),
                    sock=sock,
                    process_request=functools.partial(self._answer, unix=True),
                    **options,
                )
            except BaseException:
                sock.close()
                _remove_ours(where, inode)
                raise
            return Listener(address, server, clients, where, inode)
        server = await serve(
            functools.partial(self._tap, unix=False),
            kind,
            int(where),
            process_request=functools.partial(self._answer, unix=False),
            **options,
        )
        return Listener(address, server, clients)

    # -- answering -----------------------------------------------------------

    async def _answer(
        self, ws: ServerConnection, request: Request, *, unix: bool
    ) -> Response | None:
        """``process_request``: answer a plain GET, or ``None`` to let ``/tap`` upgrade."""
        url = urlsplit(request.path)
        path = url.path.rstrip("/") or "/"
        if path not in ENDPOINTS:
            return _text(http.HTTPStatus.NOT_FOUND, f"not found: {path}\n")
        section = self.section
        if self.open_clients > section.max_clients:  # this one is counted already
            return _text(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"too many API clients ([daemon.api] max_clients = {section.max_clients})\n",
            )
        if path in PRIVATE and not unix and not section.tap_over_tcp:
            return _text(
                http.HTTPStatus.FORBIDDEN,
                f"{path} is served on the Unix socket only "
                "([daemon.api] tap_over_tcp = true allows it on TCP)\n",
            )
        if path == "/health":
            return _json_response(http.HTTPStatus.OK, {"status": "ok"})
        if path == "/ready":
            ready, body = readiness(self.service)
            code = http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE
            return _json_response(code, body)
        if path == "/metrics":
            metrics = self.metrics
            text = await metrics.render_async()  # the loop runs between its families
            return _response(http.HTTPStatus.OK, text, metrics.content_type)
        if path == "/status":
            return _json_response(http.HTTPStatus.OK, status(self.service))
        try:  # /tap: a bad filter is refused before the upgrade
            _tap_filter(request.path, self.service)
        except ValueError as exc:
            return _text(http.HTTPStatus.BAD_REQUEST, f"{exc}\n")
        if len(self.hub) >= section.max_taps:
            return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, _too_many_taps(section))
        return None

    @property
    def open_clients(self) -> int:
        """API connections open now, on every address (and those a reload prepares)."""
        listeners = [*self.listeners.values(), *self._pending.values()]
        return sum(len(listener.clients) for listener in listeners)

    async def _tap(self, ws: ServerConnection, *, unix: bool) -> None:
        """The one WebSocket endpoint: ``/tap``, already checked by :meth:`_answer`."""
        assert ws.request is not None
        assert isinstance(ws, ApiConnection)  # create_connection made it
        try:
            match = _tap_filter(ws.request.path, self.service)
        except ValueError as exc:  # the routes changed since the handshake
            await ws.close(1008, str(exc)[:120])
            return
        section = self.section
        if len(self.hub) >= section.max_taps:  # others upgraded since the answer
            await ws.close(1013, _too_many_taps(section).strip())
            return
        if not unix and not section.tap_over_tcp:  # a reload turned it off meanwhile
            await ws.close(1008, "/tap is served on the Unix socket only")
            return
        await self.hub.serve(ws, match, section.tap_buffer, unix=unix)


def _too_many_taps(section: ApiSection) -> str:
    return f"too many /tap clients ([daemon.api] max_taps = {section.max_taps})\n"


def _tap_filter(target: str, service: DaemonView) -> TapFilter:
    query = parse_qs(urlsplit(target).query, keep_blank_values=True)
    return TapFilter.parse(query, service.config.routes)


def _response(code: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(code.value, code.phrase, headers, body)


def _text(code: http.HTTPStatus, text: str) -> Response:
    return _response(code, text.encode(), "text/plain; charset=utf-8")


def _json_response(code: http.HTTPStatus, body: Any) -> Response:
    return _response(code, _json.encode(body) + b"\n", "application/json")


# -- Unix sockets ---------------------------------------------------------------


def _bind_unix(path: str, mode: int) -> tuple[socket.socket, int]:
    """A Unix socket bound at ``path`` with ``mode``, not listening yet (asyncio does
    that), and the inode of its file."""
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        inode = os.lstat(path).st_ino
        try:
            # Before listen(): nobody connects with the umask's mode.
            _chmod_socket(path, inode, mode)
        except OSError:
            _remove_ours(path, inode)
            raise
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, inode


def _clear_stale(path: str) -> None:
    """Remove a socket file nothing listens on; refuse a live one or any other file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, "a file that is not a socket is in the way")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # stale: left by a process that is gone
    except TimeoutError:
        raise OSError(errno.EADDRINUSE, "another process listens there") from None
    else:
        raise OSError(errno.EADDRINUSE, "another process listens there")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    log.info("api_stale_socket_removed", path=path)


def _chmod_socket(path: str, inode: int, mode: int) -> None:
    """chmod the socket file we bound at ``path``, never what a symlink there points
    to: the path is opened without following links, and only the socket with our
    inode is changed (through the descriptor); anything else is an ``OSError``."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISSOCK(info.st_mode) or info.st_ino != inode:
            raise OSError(errno.EEXIST, "the socket file was replaced (by a link or a file)")
        # An O_PATH descriptor takes no fchmod(); its /proc entry is that very file.
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode)
        except FileNotFoundError:
            # No /proc (a bare chroot): the path, just checked to be our socket.
            os.chmod(path, mode)
    finally:
        os.close(fd)


def _set_mode(path: str, inode: int, mode: int) -> None:
    """A reload's new ``socket_mode`` on a socket kept open; a problem is logged."""
    try:
        _chmod_socket(path, inode, mode)
    except OSError as exc:
        log.warning("api_socket_mode_not_set", path=path, error=_reason(exc))


def _tcp_port(address: str) -> int | None:
    kind, where = parse_listen(address)
    return where if kind != "unix" and isinstance(where, int) else None


def _remove_ours(path: str, inode: int) -> None:
    """Remove the socket file at ``path`` if it is still the one we bound."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
