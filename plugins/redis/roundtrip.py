"""Many commands in one round trip, on connections wsroute owns: the hot commands' way to Redis.

A :class:`Link` keeps its own connections to Redis (TCP, TLS or a unix
socket, from the plugin's ``url``) and speaks to them through hiredis' public
API only: ``pack_command`` packs each command in C, one write carries them all,
and a ``hiredis.Reader`` fed with what the socket returns hands back one reply
per command. Against the other public ways, per ``XADD`` of a frame's 16
arguments (111 per round trip, client CPU; ``bench/redis_roundtrip.py``): this
about 2 µs, redis-py's pipeline about 16 µs, redis-py's connection with one
``read_response`` per reply about 7 µs (each arms and cancels a timeout). The
round trip has one deadline, ``timeout``, from the write to the last reply.

Invariants:

- Replies come back in the order of the commands, an error reply as its
  ``ResponseError`` instance in its place (``NoScriptError`` for ``NOSCRIPT``,
  as redis-py names them); the other replies are unaffected.
- The connections speak RESP2 and never subscribe: commands that would make
  Redis push messages unasked (``HELLO``, ``SUBSCRIBE``, ``MONITOR``, ...) are
  refused before anything is sent, so every reply read is a command's reply;
  a push met anyway (hiredis marks them) is a protocol error, never a reply.
- Any other failure (connection lost, timeout, cancellation) closes the
  connection, so no reply is left for the next round trip, and raises
  redis-py's ``ConnectionError`` or ``TimeoutError``: the caller cannot tell
  which commands Redis ran.
- A connection found dead when reused (a Redis restart) is replaced and the
  commands sent once more, with ``retry_stale``: like redis-py's one
  immediate retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from hiredis import PushNotification
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Command", "Link", "round_trip"]

#: One command and its arguments: ``("XADD", stream, "*", b"frame", frame, ...)``.
Command = Sequence[str | bytes | int]

# Commands after which Redis sends what no command asked for (RESP3 pushes,
# pub/sub messages, a monitor's feed) or that reset the connection's state.
_REFUSED = frozenset(
    {"HELLO", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR", "RESET", "SYNC", "PSYNC"}
)

# An error reply's first word → the class redis-py raises for it (its message without
# the word); every other error reply is a ResponseError with its whole text.
_ERRORS: dict[str, type[RedisError]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
    "OOM": OutOfMemoryError,
    "NOPERM": NoPermissionError,
}

# Command names met and found sendable: the code sends a handful of names.
_CHECKED: dict[str | bytes | int, bool] = {}


def _check(name: str | bytes | int) -> None:
    text = name.decode() if isinstance(name, bytes) else str(name)
    if text.upper() in _REFUSED:
        raise ValueError(f"{text} is not sent on a round-trip connection")
    if len(_CHECKED) < 1024:
        _CHECKED[name] = True


# hiredis' stub types the argument as a one-element tuple; it takes any length.
_pack = cast("Callable[[tuple[Any, ...]], bytes]", hiredis.pack_command)

_NEED_MORE = object()
_READ_SIZE = 65536


def _reply_error(message: str) -> RedisError:
    code, _, rest = message.partition(" ")
    cls = _ERRORS.get(code)
    return cls(rest) if cls is not None else ResponseError(message)


@dataclass(frozen=True)
class _Address:
    host: str
    port: int
    path: str | None  # a unix socket
    username: str | None
    password: str | None
    db: int
    tls: ssl.SSLContext | None

    @classmethod
    def parse(cls, url: str) -> _Address:
        """``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS, the server's
        certificate checked unless ``?ssl_cert_reqs=none``) or ``unix:///path[?db=N]``."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if parts.scheme == "unix":
            db_text = query.get("db", "0")
        else:
            db_text = parts.path.lstrip("/") or query.get("db", "0")
        password = parts.password or query.get("password")
        tls = None
        if parts.scheme == "rediss":
            tls = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
            if query.get("ssl_cert_reqs", "required").lower() in ("none", "cert_none"):
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        elif parts.scheme not in ("redis", "unix"):
            raise ValueError(f"a redis URL must be redis://, rediss:// or unix://, not {url!r}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            path=unquote(parts.path) if parts.scheme == "unix" else None,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(password) if password else None,
            db=int(db_text),
            tls=tls,
        )

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"


class _Connection:
    """One socket to Redis and the hiredis reader of its replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.replies = hiredis.Reader(replyError=_reply_error, notEnoughData=_NEED_MORE)

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    async def exchange(self, packed: list[bytes], count: int) -> list[Any]:
        """Write the packed commands, read ``count`` replies."""
        self.writer.writelines(packed)
        replies: list[Any] = []
        gets = self.replies.gets
        while len(replies) < count:
            reply = gets()
            if reply is _NEED_MORE:
                data = await self.reader.read(_READ_SIZE)
                if not data:
                    raise RedisConnectionError("Connection closed by server.")
                self.replies.feed(data)
                continue
            if isinstance(reply, PushNotification):  # hiredis' type for a RESP3 push
                raise RedisConnectionError("Protocol error: a push message where a reply was due")
            replies.append(reply)
        return replies

    def close(self) -> None:
        self.writer.close()


class Link:
    """Connections to one Redis, each used by one round trip at a time (see the module's
    invariants); idle ones are kept for the next round trip."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        connect_timeout: float | None = None,
        keepalive: bool = False,
    ) -> None:
        self._address = _Address.parse(url)
        self._timeout = timeout
        self._connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._keepalive = keepalive
        self._idle: list[_Connection] = []
        self._closed = False

    async def round_trip(
        self, commands: Sequence[Command], *, retry_stale: bool = False
    ) -> list[Any]:
        """Send ``commands`` in one write and return their replies."""
        packed: list[bytes] = []
        pack = _pack
        checked = _CHECKED
        for command in commands:
            name = command[0]
            if checked.get(name) is not True:
                _check(name)
            packed.append(pack(command if command.__class__ is tuple else tuple(command)))
        if not packed:
            return []
        reused = True
        while True:
            connection = self._take()
            if connection is None:
                reused = False
                connection = await self._connect()
            try:
                try:
                    async with asyncio.timeout(self._timeout):
                        replies = await connection.exchange(packed, len(packed))
                except TimeoutError:
                    raise RedisTimeoutError(f"Timeout reading from {self._address}") from None
                except OSError as exc:
                    raise RedisConnectionError(
                        f"Error while talking to {self._address}: {exc}"
                    ) from exc
            except RedisConnectionError:
                connection.close()
                if reused and retry_stale:
                    retry_stale = False
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            self._put(connection)
            return replies

    async def aclose(self) -> None:
        """Close the idle connections; round trips under way close theirs when done."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        # Let the transports finish closing before the loop may end; a TLS goodbye to
        # a frozen server is not waited for longer than a round trip.
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(self._timeout):
                for connection in idle:
                    await connection.writer.wait_closed()

    def _take(self) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.usable():
                return connection
            connection.close()
        return None

    def _put(self, connection: _Connection) -> None:
        if self._closed:
            connection.close()
        else:
            self._idle.append(connection)

    async def _connect(self) -> _Connection:
        address = self._address
        try:
            async with asyncio.timeout(self._connect_timeout):
                if address.path is not None:
                    reader, writer = await asyncio.open_unix_connection(address.path)
                else:
                    reader, writer = await asyncio.open_connection(
                        address.host,
                        address.port,
                        ssl=address.tls,
                        server_hostname=address.host if address.tls else None,
                    )
                sock = writer.get_extra_info("socket")
                if sock is not None and address.path is None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if self._keepalive:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                connection = _Connection(reader, writer)
                await self._hello(connection)
        except TimeoutError:
            raise RedisTimeoutError(f"Timeout connecting to {address}") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to {address}: {exc}") from exc
        return connection

    async def _hello(self, connection: _Connection) -> None:
        """AUTH and SELECT, as the URL asks; an error reply closes the connection."""
        address = self._address
        setup: list[tuple[str | int, ...]] = []
        if address.password is not None:
            if address.username is not None:
                setup.append(("AUTH", address.username, address.password))
            else:
                setup.append(("AUTH", address.password))
        if address.db:
            setup.append(("SELECT", address.db))
        if not setup:
            return
        try:
            replies = await connection.exchange([_pack(command) for command in setup], len(setup))
        except BaseException:
            connection.close()
            raise
        for command, reply in zip(setup, replies, strict=True):
            if isinstance(reply, Exception):
                connection.close()
                if command[0] == "AUTH":
                    raise AuthenticationError(str(reply))
                raise reply


async def round_trip(
    link: Link, commands: Sequence[Command], *, retry_stale: bool = False
) -> list[Any]:
    """``link.round_trip(commands)``: one write, one reply per command in its place."""
    return await link.round_trip(commands, retry_stale=retry_stale)
