"""The benchmark upstream: a separate process that floods its clients with frames.

It is a real ``websockets`` server on 127.0.0.1 (a free port) for the
handshake; after that it writes pre-encoded WebSocket frames straight to the
transport, many frames per ``write()``, so that the client under test, not this
process, is the bottleneck. A rate-limited mode (``--rate``) encodes each frame
when it is sent and embeds the send time (``time.time_ns()``) in its JSON body,
for latency measurements.

The driver (``bench/run.py``) talks to it over stdin/stdout, one JSON object
per line on stdout::

    {"event": "listening", "port": P}         at once
    {"event": "connected", "count": C}        once --connections clients are in
    {"event": "started", "t": MONOTONIC_NS}   right before the first frame (after "go")
    {"event": "sent", "count": N, "t": ...}   when every connection sent its frames
                                              (or on "stop"/EOF, with what was sent)

and reads ``go`` (start sending) and ``stop`` (stop, close, exit) from stdin.
EOF on stdin is a ``stop``. Frame kinds (``--kind``):

- ``binary``: the reference protocol, a little-endian ``int32`` opcode 1 and an
  ~80-byte JSON body (98 bytes in all);
- ``json``: an ~80-byte JSON text frame with ``"type": "tick"``;
- ``large``: opcode 1 and a JSON order-book body, 4096 bytes in all.

``--deflate`` accepts permessage-deflate (``server_no_context_takeover``: each
message compressed on its own) and sends every frame compressed (RSV1).

``--count 0`` sends until ``stop``. Run ``python bench/upstream.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import struct
import sys
import threading
import time
import zlib
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

OPCODE_TICK = 1
_HEADER = struct.Struct("<i")
# Frames per transport.write() in flood mode: ~25 KB of small frames.
_BATCH = 256
# How many distinct pre-encoded frames to cycle through.
_DISTINCT = 1024


def ws_frame(payload: bytes, *, text: bool, deflate: bool = False) -> bytes:
    """One unmasked, unfragmented server-to-client WebSocket frame (RFC 6455 §5.2);
    ``deflate``: the payload compressed on its own (permessage-deflate, RSV1 set)."""
    first = 0x81 if text else 0x82
    if deflate:
        compressor = zlib.compressobj(wbits=-15)
        payload = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        payload = payload.removesuffix(b"\x00\x00\xff\xff")
        first |= 0x40
    size = len(payload)
    if size < 126:
        head = bytes((first, size))
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, 126, size)
    else:
        head = struct.pack("!BBQ", first, 127, size)
    return head + payload


def tick_body(n: int, ts: int = 0) -> bytes:
    """The ~80-byte JSON body of a reference-protocol tick."""
    price = 100.0 + (n % 400) * 0.25
    return b'{"service":"first","n":%d,"price":%.2f,"qty":%d,"side":"buy","ts":%d}' % (
        n,
        price,
        n % 7 + 1,
        ts,
    )


def payload(kind: str, n: int, ts: int = 0) -> tuple[bytes, bool]:
    """The payload of frame ``n`` of ``kind`` and whether it is a text frame."""
    if kind == "binary":
        return _HEADER.pack(OPCODE_TICK) + tick_body(n, ts), False
    if kind == "json":
        price = 100.0 + (n % 400) * 0.25
        text = b'{"type":"tick","service":"first","n":%d,"price":%.2f,"qty":%d,"ts":%d}' % (
            n,
            price,
            n % 7 + 1,
            ts,
        )
        return text, True
    if kind == "large":
        return _HEADER.pack(OPCODE_TICK) + _book_body(n, ts, 4096 - _HEADER.size), False
    raise ValueError(f"unknown frame kind {kind!r}")


def encoded(kind: str, n: int, ts: int = 0, *, deflate: bool = False) -> bytes:
    """Frame ``n`` of ``kind``, WebSocket framing included, ready to write."""
    data, text = payload(kind, n, ts)
    return ws_frame(data, text=text, deflate=deflate)


def _book_body(n: int, ts: int, size: int) -> bytes:
    """A JSON order-book snapshot padded to exactly ``size`` bytes."""
    levels = []
    for i in range(200):
        levels.append([round(100.0 + i * 0.25 + (n % 10) * 0.01, 2), i % 13 + 1])
    body: dict[str, Any] = {"service": "book", "n": n, "ts": ts, "bids": [], "asks": []}
    encoded = b""
    for i, level in enumerate(levels):
        side = "bids" if i % 2 == 0 else "asks"
        body[side].append(level)
        candidate = json.dumps(body, separators=(",", ":")).encode()
        if len(candidate) > size - 12:
            body[side].pop()
            break
        encoded = candidate
    pad = size - len(encoded) - len(',"pad":""')
    body["pad"] = "x" * max(0, pad)
    encoded = json.dumps(body, separators=(",", ":")).encode()
    assert len(encoded) == size, (len(encoded), size)
    return encoded


class Upstream:
    """Serve ``connections`` clients; on ``go`` send each one ``count`` frames."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.clients: list[ServerConnection] = []
        self.go = asyncio.Event()
        self.stop = asyncio.Event()
        self.all_in = asyncio.Event()
        self.sent = 0
        self.finished = 0
        self.all_sent = asyncio.Event()
        # Pre-encoded flood: _BATCH frames per chunk, cycling through _DISTINCT frames.
        # A real-looking 19-digit timestamp keeps flood frames the size of paced ones.
        stamp = time.time_ns()
        frames = [encoded(args.kind, n, stamp, deflate=args.deflate) for n in range(_DISTINCT)]
        self.chunks = [
            b"".join(frames[(i + j) % _DISTINCT] for j in range(_BATCH))
            for i in range(0, _DISTINCT, _BATCH)
        ]

    async def handler(self, ws: ServerConnection) -> None:
        self.clients.append(ws)
        if len(self.clients) == self.args.connections:
            emit(event="connected", count=len(self.clients))
            self.all_in.set()
        await self.go.wait()
        with contextlib.suppress(Exception):
            if self.args.rate > 0:
                await self._paced(ws)
            else:
                await self._flood(ws)
        self.finished += 1
        if self.finished == self.args.connections:
            self.all_sent.set()
        if self.args.hold:
            await self.stop.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2)

    async def _flood(self, ws: ServerConnection) -> None:
        """Write pre-encoded chunks as fast as the socket takes them."""
        transport = ws.transport
        count = self.args.count
        chunks = self.chunks
        sent = 0
        i = 0
        while (count == 0 or sent < count) and not self.stop.is_set():
            left = count - sent if count else _BATCH
            if left >= _BATCH:
                transport.write(chunks[i % len(chunks)])
                sent += _BATCH
                self.sent += _BATCH
            else:
                kind, deflate = self.args.kind, self.args.deflate
                one = [
                    encoded(kind, sent + j, time.time_ns(), deflate=deflate) for j in range(left)
                ]
                transport.write(b"".join(one))
                sent += left
                self.sent += left
            i += 1
            await ws.drain()
            if i % 64 == 0:
                await asyncio.sleep(0)  # let the other connections and stdin in

    async def _paced(self, ws: ServerConnection) -> None:
        """Send ``rate`` frames/s, each encoded at send time with its ``time.time_ns()``.

        With one connection the pacing sleeps block the loop (``time.sleep``
        wakes within ~0.1 ms, the event loop only within ~1 ms), so frames go
        out one or two at a time instead of in millisecond bursts.
        """
        args = self.args
        rate = args.rate
        transport = ws.transport
        kind = args.kind
        precise = args.connections == 1
        start = time.monotonic()
        sent = 0
        last_yield = start
        while (args.count == 0 or sent < args.count) and not self.stop.is_set():
            now = time.monotonic()
            due = int((now - start) * rate) + 1
            if args.count:
                due = min(due, args.count)
            if due > sent:
                out = []
                while sent < due:
                    out.append(encoded(kind, sent, time.time_ns(), deflate=args.deflate))
                    sent += 1
                transport.write(b"".join(out) if len(out) > 1 else out[0])
                self.sent += len(out)
                await ws.drain()
            wake = start + sent / rate
            delay = wake - time.monotonic()
            if precise:
                if time.monotonic() - last_yield > 0.002:
                    last_yield = time.monotonic()
                    await asyncio.sleep(0)
                if delay > 0:
                    # Blocking on purpose: ~0.1 ms wake-ups, and this loop has nothing else to do.
                    time.sleep(delay)  # noqa: ASYNC251
            else:
                await asyncio.sleep(max(0.0, delay))


def emit(**fields: Any) -> None:
    """One JSON line on stdout for the driver."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _stdin_reader(loop: asyncio.AbstractEventLoop, upstream: Upstream) -> None:
    for line in sys.stdin:
        word = line.strip()
        if word == "go":
            loop.call_soon_threadsafe(upstream.go.set)
        elif word == "stop":
            break
    loop.call_soon_threadsafe(upstream.stop.set)


async def main(args: argparse.Namespace) -> None:
    upstream = Upstream(args)
    loop = asyncio.get_running_loop()
    threading.Thread(target=_stdin_reader, args=(loop, upstream), daemon=True).start()
    async with serve(
        upstream.handler,
        "127.0.0.1",
        0,
        compression=None,
        extensions=(
            [ServerPerMessageDeflateFactory(server_no_context_takeover=True)]
            if args.deflate
            else None
        ),
        max_size=2**20,
        ping_interval=None,
        write_limit=2**18,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        emit(event="listening", port=port)
        if not args.wait_go:
            upstream.go.set()
        await upstream.go.wait()
        emit(event="started", t=time.monotonic_ns())
        done = asyncio.ensure_future(upstream.all_sent.wait())
        stop = asyncio.ensure_future(upstream.stop.wait())
        await asyncio.wait({done, stop}, return_when=asyncio.FIRST_COMPLETED)
        emit(event="sent", count=upstream.sent, t=time.monotonic_ns())
        if args.hold:
            await stop
        upstream.stop.set()
        for task in (done, stop):
            task.cancel()
        for ws in list(upstream.clients):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=["binary", "json", "large"], default="binary")
    p.add_argument("--count", type=int, default=100_000, help="frames per connection; 0: endless")
    p.add_argument("--rate", type=float, default=0.0, help="frames/s per connection; 0: flood")
    p.add_argument("--connections", type=int, default=1, help="wait for this many clients")
    p.add_argument("--wait-go", action="store_true", help='start sending on "go" from stdin')
    p.add_argument("--hold", action="store_true", help="keep connections open until stop/EOF")
    p.add_argument("--deflate", action="store_true", help="permessage-deflate, frames compressed")
    return p


if __name__ == "__main__":
    asyncio.run(main(_parser().parse_args()))
