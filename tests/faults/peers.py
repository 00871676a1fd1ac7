"""Hostile upstreams for the fault-injection suite, and small measuring helpers.

websockets' own server is polite: it answers pings, sends close frames, and
never writes an invalid frame. The faults here need a peer that can misbehave,
so :class:`RawServer` speaks just enough of RFC 6455 by hand: it reads the
HTTP upgrade request, answers it (optionally accepting permessage-deflate),
and then gives each connection to a test coroutine as a :class:`RawSession`
that writes hand-built frames — server frames are unmasked — and can end the
TCP connection without a close frame, or with a reset.

Also here: :func:`ws_server` (a websockets server on 127.0.0.1 for the polite
cases), :func:`vmrss` (this process's resident memory), :func:`max_attempts`
(how many connects a backoff allows in a time window), and JSON-log helpers
for the subprocess tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "RawServer",
    "RawSession",
    "accept_key",
    "deflate_bomb",
    "deflated",
    "events",
    "frame",
    "max_attempts",
    "read_json_log",
    "ticks_then",
    "vmrss",
    "ws_server",
]

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# What permessage-deflate strips from the end of each compressed message (RFC 7692 §7.2.1).
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` answer to a client's ``Sec-WebSocket-Key``."""
    digest = hashlib.sha1((key + _GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    """One unmasked (server-to-client) frame: header bits, length, payload.

    Nothing is checked, so a test can build any frame, valid or not.
    """
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (opcode & 0x0F)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


def close_payload(code: int, reason: str = "") -> bytes:
    """The body of a close frame."""
    return struct.pack("!H", code) + reason.encode("utf-8")


def deflated(payload: bytes) -> bytes:
    """``payload`` as one permessage-deflate message body (no context takeover)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(_DEFLATE_TAIL)
    return data[: -len(_DEFLATE_TAIL)]


@functools.cache
def deflate_bomb(expanded: int) -> bytes:
    """A permessage-deflate payload that inflates to ``expanded`` zero bytes.

    Deflate tops out near 1000:1 on zeros, so 256 MiB fits in about 256 KiB.
    Cached: building it costs a fraction of a second per 100 MiB.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    parts = []
    left = expanded
    while left > 0:
        piece = chunk if left >= len(chunk) else chunk[:left]
        parts.append(compressor.compress(piece))
        left -= len(piece)
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(parts)
    assert data.endswith(_DEFLATE_TAIL)
    return data[: -len(_DEFLATE_TAIL)]


class RawSession:
    """One accepted connection of a :class:`RawServer`, after the upgrade.

    ``number`` counts connections from 1. ``deflate`` tells whether
    permessage-deflate was negotiated (compressed frames then carry RSV1).
    """

    def __init__(
        self,
        number: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        deflate: bool,
    ) -> None:
        self.number = number
        self.reader = reader
        self.writer = writer
        self.deflate = deflate
        self.frames_sent = 0

    async def send(self, data: bytes) -> None:
        """Write bytes as they are, and wait for the transport's buffer to drain."""
        self.writer.write(data)
        await self.writer.drain()

    async def text(self, payload: str | bytes) -> None:
        """A text frame; ``bytes`` are sent unchecked (invalid UTF-8 on purpose)."""
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        await self.send(frame(OP_TEXT, data))
        self.frames_sent += 1

    async def binary(self, payload: bytes) -> None:
        await self.send(frame(OP_BINARY, payload))
        self.frames_sent += 1

    async def flushed(self, timeout: float = 5.0) -> None:
        """Wait until every byte written so far left the process (is in the kernel)."""
        transport = self.writer.transport
        async with asyncio.timeout(timeout):
            while transport.get_write_buffer_size() > 0:
                await asyncio.sleep(0.005)

    def stop_reading(self) -> None:
        """Stop reading the socket: the client's pings pile up unanswered (a half-open peer)."""
        transport: Any = self.writer.transport  # asyncio's or uvloop's: the same methods
        transport.pause_reading()

    async def fin(self) -> None:
        """End the TCP connection with a FIN and no close frame, after flushing."""
        await self.flushed()
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def reset(self) -> None:
        """End the TCP connection with a reset (what ``transport.abort()`` does), after flushing.

        An abort discards the transport's buffer, so flush first: what the test
        counts as sent must have reached the socket.
        """
        await self.flushed()
        self.writer.transport.abort()

    async def read_frame(self) -> tuple[int, bytes]:
        """The next client frame as ``(opcode, payload)``, unmasked; raises at EOF."""
        head = await self.reader.readexactly(2)
        opcode = head[0] & 0x0F
        size = head[1] & 0x7F
        masked = head[1] & 0x80
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        mask = await self.reader.readexactly(4) if masked else b"\x00\x00\x00\x00"
        data = await self.reader.readexactly(size)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data)) if masked else data
        return opcode, payload

    async def answer_control(self, *, pings: bool = True) -> None:
        """Read the client's frames: answer pings (if ``pings``), echo a close and hang up.

        Run it as a task next to the writer to make the peer polite on the
        control channel; returns at EOF or after a close.
        """
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                opcode, payload = await self.read_frame()
                if opcode == OP_PING and pings:
                    await self.send(frame(OP_PONG, payload))
                elif opcode == OP_CLOSE:
                    await self.send(frame(OP_CLOSE, payload))
                    self.writer.close()
                    return

    async def wait_eof(self, timeout: float = 10.0) -> None:
        """Discard whatever the client sends until it hangs up (bounded)."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass


SessionHandler = Callable[[RawSession], Awaitable[None]]


class RawServer:
    """A TCP server on 127.0.0.1 that does the WebSocket upgrade itself.

    ``ssl`` (a server context) serves ``wss://``. ``deflate=True`` accepts a
    permessage-deflate offer (with
    ``server_no_context_takeover``, so every message inflates on its own).
    ``preamble`` is written in the same ``write()`` as the 101 answer, so that
    frames reach the client in the packet that completes its handshake.
    Each connection runs ``handler(session)``; when it returns the socket is
    closed (with a FIN) unless the handler already ended it.
    """

    def __init__(
        self,
        handler: SessionHandler,
        *,
        deflate: bool = False,
        preamble: bytes = b"",
        ssl: Any = None,
    ) -> None:
        self.handler = handler
        self.deflate = deflate
        #: A server ``ssl.SSLContext``: the URL is then ``wss://``.
        self.ssl = ssl
        self.preamble = preamble
        self.connections = 0
        self.sessions: list[RawSession] = []
        self.requests: list[dict[str, str]] = []
        self.url = ""

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Listen; yields the ``ws://127.0.0.1:PORT/`` URL."""
        tasks: set[asyncio.Task[None]] = set()

        def client_connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.create_task(self._connection(reader, writer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        server = await asyncio.start_server(client_connected, "127.0.0.1", 0, ssl=self.ssl)
        port = server.sockets[0].getsockname()[1]
        self.url = f"{'wss' if self.ssl is not None else 'ws'}://127.0.0.1:{port}/"
        try:
            yield self.url
        finally:
            server.close()
            for task in list(tasks):
                task.cancel()
            for task in list(tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for session in self.sessions:
                session.writer.transport.abort()
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.transport.abort()
            return
        headers = _parse_headers(request)
        self.requests.append(headers)
        offer = headers.get("sec-websocket-extensions", "")
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept_key(headers.get('sec-websocket-key', ''))}",
        ]
        deflate = self.deflate and "permessage-deflate" in offer
        if deflate:
            params = ["permessage-deflate", "server_no_context_takeover"]
            if "server_max_window_bits" in offer:
                params.append("server_max_window_bits=15")
            lines.append("Sec-WebSocket-Extensions: " + "; ".join(params))
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + self.preamble)
        self.connections += 1
        session = RawSession(self.connections, reader, writer, deflate=deflate)
        self.sessions.append(session)
        try:
            await self.handler(session)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()


def ticks_then(
    bad: bytes, before: int = 5, after: int = 5, *, deflate: bool = False, pause: float = 0.0
) -> RawServer:
    """Session 1: ``before`` JSON ticks ``{"type": "tick", "id": n}``, then ``bad`` (raw
    bytes); session 2: ``after`` more ticks, numbered on. With ``pause``, ``bad`` is
    sent that many seconds after the ticks left, so that the client reads it apart
    from the handshake's response (the websockets transport's fast frame path sees it).

    Both sessions answer the client's close frame, so the client sees the code it sent.
    """

    async def peer(session: RawSession) -> None:
        control = asyncio.ensure_future(session.answer_control())
        try:
            first = 1 if session.number == 1 else before + 1
            count = before if session.number == 1 else after
            for number in range(first, first + count):
                await session.text(json.dumps({"type": "tick", "id": number}))
            if session.number == 1:
                if pause:
                    await session.flushed()
                    await asyncio.sleep(pause)
                await session.send(bad)
            await control
        finally:
            control.cancel()

    return RawServer(peer, deflate=deflate)


def _parse_headers(request: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in request.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


@contextlib.asynccontextmanager
async def ws_server(
    handler: Callable[[ServerConnection], Awaitable[None]],
    process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
    **kw: Any,
) -> AsyncIterator[str]:
    """A websockets server on 127.0.0.1 (a well-behaved peer); yields its URL."""
    async with serve(handler, "127.0.0.1", 0, process_request=process_request, **kw) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        scheme = "wss" if kw.get("ssl") else "ws"
        yield f"{scheme}://127.0.0.1:{port}/"


def vmrss() -> int:
    """This process's resident set size in bytes (``VmRSS`` of /proc/self/status)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def max_attempts(
    initial: float, maximum: float, factor: float, jitter: float, window: float
) -> int:
    """The most connection attempts a backoff allows within ``window`` seconds.

    Attempt 1 is immediate; before attempt ``k + 1`` the loop sleeps at least
    ``min(maximum, initial × factor**(k-1)) × (1 − jitter)``. The attempts
    themselves take time too, so the real count is lower.
    """
    attempts = 1
    elapsed = 0.0
    step = 0
    while True:
        shortest = min(maximum, initial * factor**step) * (1.0 - jitter)
        if elapsed + shortest > window:
            return attempts
        elapsed += shortest
        attempts += 1
        step += 1


def read_json_log(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a daemon run (non-JSON lines, e.g. tracebacks, skipped)."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


Record = TypeVar("Record", bound=Mapping[str, Any])


def events(logs: Iterable[Record], name: str) -> list[Record]:
    """The log records (captured by structlog, or parsed JSON lines) whose event is ``name``."""
    return [e for e in logs if e.get("event") == name]
