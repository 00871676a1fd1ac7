"""The frame reader against hostile peers: close codes, recovery, read bounds.

Each daemon-level test runs on both event loops (asyncio's selector loop and
uvloop): the reader's promises (bounded reads, backpressure, close codes) must
not depend on which one runs it. The peers are the hand-written ones of the
fault suite (tests/faults/peers.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from wsroute.config import loads
from wsroute.exceptions import ConfigError
from wsroute.service import Service
from wsroute.testing import ScriptedUpstream, build_handler, message, run_handler, wait_until
from wsroute.transport import MAX_FRAGMENTS
from wsroute.wire import READ_SIZE

import conftest
from collectors import Collect

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
from peers import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawServer,
    RawSession,
    close_payload,
    events,
    frame,
    ticks_then,
    vmrss,
    ws_server,
)

pytestmark = pytest.mark.anyio

LOOPS = ["asyncio", "uvloop"]

Logs = list[MutableMapping[str, Any]]


@pytest.fixture(autouse=True)
def _reset_collectors() -> None:
    Collect.reset()


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Both event loops: asyncio's own, and uvloop (``[daemon] event_loop = "uvloop"``)."""
    return ("asyncio", {"use_uvloop": True}) if request.param == "uvloop" else "asyncio"


@pytest.fixture(params=[0.0, 0.1], ids=["with-the-handshake", "read-apart"])
def pause(request: pytest.FixtureRequest) -> float:
    """When a bad frame follows the ticks: in the handshake's read, or in a read of its
    own (the websockets transport's fast frame path hands it to websockets' parser)."""
    return float(request.param)


CONFIG = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "2s"

[connections.up]
url = "URL"
compression = "none"
close_timeout = "500ms"
max_frame_size = "64KiB"
reconnect = { initial = "50ms", max = "200ms" }
EXTRA

[routes.data]
key = "tick"
handlers = ["sink"]

[handlers.sink]
plugin = "collectors:Collect"
[handlers.dlq]
plugin = "collectors:Collect"
"""


def config(url: str, extra: str = "") -> str:
    return CONFIG.replace("URL", url).replace("EXTRA", extra)


# Binary frames: an int32 opcode header and a JSON body; text frames: JSON.
_MIXED = (
    'codec = "mixed"\n[codecs.mixed]\ntype = "struct"\nheader = "<i"\nfields = ["op"]\nkey = "op"'
)
_RAW_ROUTE = (
    '[routes.raw]\nkey = 7\nhandlers = ["raw"]\n[handlers.raw]\nplugin = "collectors:Collect"\n'
)
_SLOW = 'plugin = "collectors:Collect"\nqueue = 8\ndelay = "1ms"\n'


@contextlib.asynccontextmanager
async def running(text: str, environ: Mapping[str, str] | None = None) -> AsyncIterator[Service]:
    async with conftest.running(text, environ) as service:
        yield service
    for name, runner in service.runners.items():
        assert runner.balanced(), (name, runner.snapshot())


def tick(number: int) -> bytes:
    return json.dumps({"type": "tick", "id": number}).encode()


def ids() -> list[int]:
    return [m.body["id"] for m in Collect.seen["sink"]]


async def lost_after_bad_frame(server: RawServer, total: int = 10) -> Logs:
    """Run until ``total`` ticks arrived over two sessions; the logs of the run."""
    with capture_logs() as logs:
        async with server.serve() as url, running(config(url)) as svc:
            await wait_until(lambda: len(Collect.seen["sink"]) >= total, timeout=8)
            assert server.connections == 2
            assert svc.connections["up"].stats.reconnects == 1
    # the refused frame was never read: seq runs on without a gap, nothing lost
    assert [m.seq for m in Collect.seen["sink"]] == list(range(1, total + 1))
    assert ids() == list(range(1, total + 1))
    assert not Collect.seen["dlq"]
    assert not events(logs, "session_crashed")
    return logs


# -- reassembly -------------------------------------------------------------------


async def test_fragmented_messages_with_an_interleaved_ping_are_reassembled() -> None:
    pongs: list[bytes] = []
    text = tick(1)
    binary = struct.pack("<i", 7) + json.dumps({"pad": "x" * 300}).encode()

    async def peer(session: RawSession) -> None:
        await session.send(frame(OP_TEXT, text[:5], fin=False))
        await session.send(frame(OP_PING, b"mid-message"))
        await session.send(frame(OP_CONT, text[5:12], fin=False))
        await session.send(frame(OP_CONT, text[12:]))
        await session.send(frame(OP_BINARY, binary[:100], fin=False))
        await session.send(frame(OP_CONT, binary[100:]))
        await session.text(tick(2))
        while True:
            opcode, payload = await session.read_frame()
            if opcode == OP_PONG:
                pongs.append(payload)
            elif opcode == OP_CLOSE:
                await session.send(frame(OP_CLOSE, payload))
                return

    server = RawServer(peer)
    async with server.serve() as url, running(config(url, _MIXED) + _RAW_ROUTE):
        await wait_until(lambda: len(Collect.seen["sink"]) == 2 and len(Collect.seen["raw"]) == 1)
        await wait_until(lambda: bool(pongs))
    assert ids() == [1, 2]
    assert [m.seq for m in Collect.seen["sink"]] == [1, 3]
    assert Collect.seen["raw"][0].raw == binary
    assert pongs == [b"mid-message"]
    assert server.connections == 1


async def test_frames_in_the_packet_that_completes_the_handshake_are_delivered() -> None:
    async def peer(session: RawSession) -> None:
        control = asyncio.ensure_future(session.answer_control())
        try:
            await session.text(tick(4))
            await control
        finally:
            control.cancel()

    first = b"".join(frame(OP_TEXT, tick(n)) for n in (1, 2, 3))
    server = RawServer(peer, preamble=first)
    async with server.serve() as url, running(config(url)):
        await wait_until(lambda: len(Collect.seen["sink"]) == 4)
    assert ids() == [1, 2, 3, 4]


async def test_a_burst_then_a_close_frame_is_delivered_whole_before_the_reconnect() -> None:
    total = 300  # far past the high-water mark: reading is paused with the close unread

    async def peer(session: RawSession) -> None:
        if session.number > 1:
            await session.answer_control()
            return
        burst = b"".join(frame(OP_TEXT, tick(n)) for n in range(1, total + 1))
        await session.send(burst + frame(OP_CLOSE, close_payload(1001, "going away")))
        await session.read_frame()  # the echo
        await session.fin()

    text = config("URL")
    text = text.replace('plugin = "collectors:Collect"\n[handlers.dlq]', _SLOW + "[handlers.dlq]")
    server = RawServer(peer)
    with capture_logs() as logs:
        async with server.serve() as url, running(text.replace("URL", url)):
            await wait_until(lambda: len(Collect.seen["sink"]) == total, timeout=20)
            await wait_until(lambda: server.connections == 2)
    assert ids() == list(range(1, total + 1))
    assert not Collect.seen["dlq"]
    lost = events(logs, "connection_lost")[0]
    assert (lost["code"], lost["reason"], lost["seq"]) == (1001, "going away", total)


# -- frames the transport refuses: the code it sent is what the log says -------------


async def test_invalid_utf8_closes_1007_and_reconnects(pause: float) -> None:
    bad = frame(OP_TEXT, b'{"type": "tick", "id": "\xff\xfe"}')
    logs = await lost_after_bad_frame(ticks_then(bad, pause=pause))
    lost = events(logs, "connection_lost")[0]
    assert (lost["code"], lost["reason"]) == (1007, "invalid start byte at position 24")
    assert lost["seq"] == 5


async def test_invalid_utf8_split_across_fragments_closes_1007(pause: float) -> None:
    payload = '{"type": "tick", "id": "é"}'.encode()
    cut = payload.index(b"\xc3") + 1  # inside the two-byte sequence: each half is invalid
    bad = frame(OP_TEXT, payload[:cut], fin=False) + frame(OP_CONT, b"\xff" + payload[cut + 1 :])
    logs = await lost_after_bad_frame(ticks_then(bad, pause=pause))
    assert events(logs, "connection_lost")[0]["code"] == 1007


async def test_frame_over_max_frame_size_closes_1009(pause: float) -> None:
    logs = await lost_after_bad_frame(ticks_then(frame(OP_BINARY, b"x" * 70_000), pause=pause))
    lost = events(logs, "connection_lost")[0]
    assert lost["code"] == 1009
    assert "65536" in lost["reason"]


async def test_frame_over_max_frame_size_in_one_read_closes_1009() -> None:
    # 4,000 bytes, whole in one socket read, over a 1 KiB limit, after the handshake's
    # read: the websockets transport's fast frame path must refuse it as websockets'
    # parser does.
    bad = frame(OP_TEXT, tick(6) + b" " * 4_000)

    async def peer(session: RawSession) -> None:
        control = asyncio.ensure_future(session.answer_control())
        try:
            first = 1 if session.number == 1 else 6
            for number in range(first, first + 5):
                await session.text(tick(number))
            if session.number == 1:
                await session.flushed()
                await anyio.sleep(0.1)  # read apart from the handshake's response
                await session.send(bad)
            await control
        finally:
            control.cancel()

    server = RawServer(peer)
    text = config("URL").replace('max_frame_size = "64KiB"', 'max_frame_size = "1KiB"')
    with capture_logs() as logs:
        async with server.serve() as url, running(text.replace("URL", url)):
            await wait_until(lambda: len(Collect.seen["sink"]) >= 10, timeout=8)
    assert ids() == list(range(1, 11))  # 1-5, the refused frame, then 6-10 anew
    lost = events(logs, "connection_lost")[0]
    assert lost["code"] == 1009
    assert "1024" in lost["reason"]


async def test_message_over_max_frame_size_in_small_fragments_closes_1009(pause: float) -> None:
    piece = b"x" * 30_000  # each fragment is fine, the message (90,000 bytes) is not
    bad = (
        frame(OP_BINARY, piece, fin=False)
        + frame(OP_CONT, piece, fin=False)
        + frame(OP_CONT, piece)
    )
    logs = await lost_after_bad_frame(ticks_then(bad, pause=pause))
    lost = events(logs, "connection_lost")[0]
    assert lost["code"] == 1009


async def test_message_in_too_many_fragments_closes_1009(pause: float) -> None:
    # websockets' limit (4,096 by default) on the frames of one message, on both transports
    pieces = [frame(OP_CONT, b" ", fin=False)] * MAX_FRAGMENTS
    bad = frame(OP_TEXT, b"{", fin=False) + b"".join(pieces) + frame(OP_CONT, b"}")
    logs = await lost_after_bad_frame(ticks_then(bad, pause=pause))
    lost = events(logs, "connection_lost")[0]
    assert (lost["code"], lost["reason"]) == (1009, "too many fragments")


async def test_a_message_in_many_fragments_under_the_limit_is_reassembled() -> None:
    body = json.dumps({"type": "tick", "id": 1, "pad": "x" * (MAX_FRAGMENTS - 40)}).encode()
    parts = [body[i : i + 1] for i in range(len(body))]
    assert len(parts) <= MAX_FRAGMENTS
    message = frame(OP_TEXT, parts[0], fin=False)
    message += b"".join(frame(OP_CONT, part, fin=False) for part in parts[1:-1])
    message += frame(OP_CONT, parts[-1])

    async def peer(session: RawSession) -> None:
        await session.send(message)
        await session.answer_control()

    server = RawServer(peer)
    async with server.serve() as url, running(config(url)):
        await wait_until(lambda: len(Collect.seen["sink"]) == 1)
    assert Collect.seen["sink"][0].raw == body.decode()


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(frame(0x3, b"reserved"), id="reserved-opcode"),
        pytest.param(frame(OP_PING, b"p" * 200), id="big-control"),
        pytest.param(bytes([0x81, 0x80 | 4]) + b"\x01\x02\x03\x04" + b"abcd", id="masked"),
        pytest.param(frame(OP_TEXT, tick(0), rsv1=True), id="rsv1-without-deflate"),
        pytest.param(frame(OP_CONT, b"orphan"), id="unexpected-continuation"),
        pytest.param(
            frame(OP_TEXT, b"{", fin=False) + frame(OP_TEXT, b"}"), id="data-inside-a-message"
        ),
    ],
)
async def test_protocol_violation_closes_1002_and_reconnects(bad: bytes, pause: float) -> None:
    logs = await lost_after_bad_frame(ticks_then(bad, pause=pause))
    lost = events(logs, "connection_lost")[0]
    assert lost["code"] == 1002
    assert lost["reason"]
    assert events(logs, "reconnect_scheduled")


# -- the peer ends the connection ----------------------------------------------------


@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_connection_dropped_without_a_close_frame_is_1006(how: str) -> None:
    async def peer(session: RawSession) -> None:
        first = 1 if session.number == 1 else 4
        for number in range(first, first + 3):
            await session.text(tick(number))
        if session.number == 1:
            await (session.fin() if how == "fin" else session.reset())
        else:
            await session.answer_control()

    server = RawServer(peer)
    with capture_logs() as logs:
        async with server.serve() as url, running(config(url)):
            await wait_until(lambda: len(Collect.seen["sink"]) >= 6, timeout=8)
    assert ids() == [1, 2, 3, 4, 5, 6]
    lost = events(logs, "connection_lost")[0]
    assert (lost["code"], lost["seq"]) == (1006, 3)


MiB = 2**20


async def test_a_ping_flood_from_a_peer_that_stopped_reading_is_bounded_and_dropped() -> None:
    """The peer floods pings and never reads our pongs: they fill our write buffer,
    the reader stops reading (TCP pushes back on the peer), memory stays bounded, and
    the keepalive — whose deadline covers its own ping's write — declares the peer
    dead and aborts: the next attempt starts within ping_interval + ping_timeout + 1s."""
    starts: list[float] = []
    burst = frame(OP_PING, b"f" * 125) * 500  # 125-byte pings: big pongs, 63 KiB a write

    async def peer(session: RawSession) -> None:
        starts.append(time.monotonic())
        if session.number > 1:
            await session.answer_control()
            return
        session.stop_reading()
        with contextlib.suppress(ConnectionError):
            for _ in range(100_000):  # bounded: the client aborts long before
                session.writer.write(burst)
                await session.writer.drain()

    text = config("URL", 'ping_interval = "1s"\nping_timeout = "1s"')
    text = text.replace('reconnect = { initial = "50ms", max = "200ms" }', "")
    text = text.replace("[connections.up]", '[connections.up]\nreconnect = { initial = "50ms" }')
    text = text.replace(
        'shutdown_timeout = "2s"', 'shutdown_timeout = "2s"\nmemory_budget = "64MiB"'
    )
    server = RawServer(peer)
    with capture_logs() as logs:
        async with server.serve() as url:
            idle = vmrss()
            peak = idle
            async with running(text.replace("URL", url)) as svc:
                connection = svc.connections["up"]
                write_paused = False
                with anyio.fail_after(15):
                    while len(starts) < 2:
                        peak = max(peak, vmrss())
                        ws: Any = connection._ws
                        if ws is not None and ws.reader._write_paused:
                            write_paused = True  # the pongs filled the write buffer
                        await anyio.sleep(0.02)
    dropped_after = starts[1] - starts[0]
    assert dropped_after <= 1 + 1 + 1, dropped_after
    assert events(logs, "keepalive_timeout")
    lost = events(logs, "connection_lost")[0]
    assert lost["cause"] == "keepalive_timeout"
    assert peak - idle <= 64 * MiB + 32 * MiB, (peak - idle) / MiB
    assert write_paused  # white-box: the flood reached the write high-water mark


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(bytes([0x81, 0x80 | 4]) + b"\x01\x02\x03\x04" + b"abcd", id="1002"),
        pytest.param(frame(OP_BINARY, b"x" * 70_000), id="1009"),
        pytest.param(frame(OP_TEXT, b"\xff"), id="1007"),
    ],
)
async def test_a_silent_peer_after_a_protocol_error_is_dropped_after_close_timeout(
    bad: bytes,
) -> None:
    """Keepalive off: we fail the connection and send our close frame; the peer neither
    answers it nor closes TCP. close_timeout later the connection is aborted and the
    reconnect loop runs."""
    starts: list[float] = []
    failed_at: list[float] = []

    async def peer(session: RawSession) -> None:
        starts.append(time.monotonic())
        control = asyncio.ensure_future(session.answer_control())
        try:
            first = 1 if session.number == 1 else 4
            for number in range(first, first + 3):
                await session.text(tick(number))
            if session.number == 1:
                control.cancel()
                session.stop_reading()
                await session.send(bad)
                failed_at.append(time.monotonic())
                await anyio.sleep(30)  # silent: no close frame, no FIN
            await control
        finally:
            control.cancel()

    text = config("URL", 'ping_interval = "0s"')
    server = RawServer(peer)
    with capture_logs() as logs:
        async with server.serve() as url, running(text.replace("URL", url)):
            await wait_until(lambda: len(Collect.seen["sink"]) >= 6, timeout=10)
    assert ids() == list(range(1, 7))  # nothing after the bad frame, nothing lost
    # close_timeout (0.5 s) + backoff (0.2 s at most), with room for a loaded machine
    assert starts[1] - failed_at[0] <= 0.5 + 0.2 + 1.0, starts[1] - failed_at[0]
    assert starts[1] - failed_at[0] >= 0.45
    lost = events(logs, "connection_lost")[0]
    assert lost["code"] == int(request_id(bad))


def request_id(bad: bytes) -> int:
    if bad[1] & 0x80:
        return 1002
    return 1009 if len(bad) > 1000 else 1007


@pytest.mark.parametrize("code", [1012, 1013])
async def test_service_restart_close_codes_slow_the_reconnect_down(code: int) -> None:
    echoed: list[tuple[int, bytes]] = []

    async def peer(session: RawSession) -> None:
        await session.text(tick(session.number))
        if session.number == 1:
            await session.send(frame(OP_CLOSE, close_payload(code, "back soon")))
            echoed.append(await session.read_frame())
            await session.fin()
        else:
            await session.answer_control()

    server = RawServer(peer)
    extra = 'reconnect = { initial = "50ms", max = "700ms", jitter = 0.0 }'
    text = config("URL", extra).replace('reconnect = { initial = "50ms", max = "200ms" }\n', "")
    with capture_logs() as logs:
        async with server.serve() as url, running(text.replace("URL", url)):
            await wait_until(lambda: len(Collect.seen["sink"]) >= 2, timeout=8)
    lost = events(logs, "connection_lost")[0]
    assert (lost["code"], lost["reason"]) == (code, "back soon")
    # the backoff would say 50 ms; the close code asks for min(max, 5 s)
    assert events(logs, "reconnect_scheduled")[0]["delay"] == 0.7
    assert echoed == [(OP_CLOSE, close_payload(code, "back soon"))]  # echoed, as RFC 6455 asks


async def test_stop_sends_a_close_frame_and_waits_for_the_reply() -> None:
    closes: list[bytes] = []

    async def peer(session: RawSession) -> None:
        await session.text(tick(1))
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                opcode, payload = await session.read_frame()
                if opcode == OP_CLOSE:
                    closes.append(payload)
                    await session.send(frame(OP_CLOSE, payload))
                    return

    server = RawServer(peer)
    async with server.serve() as url, running(config(url)):
        await wait_until(lambda: len(Collect.seen["sink"]) == 1)
    assert closes == [close_payload(1000)]


# -- backpressure --------------------------------------------------------------------


async def test_a_slow_handler_pauses_reading_without_loss_or_keepalive_timeout() -> None:
    total = 1500

    async def peer(session: RawSession) -> None:
        control = asyncio.ensure_future(session.answer_control())
        try:
            await session.send(b"".join(frame(OP_TEXT, tick(n)) for n in range(1, total + 1)))
            await control
        finally:
            control.cancel()

    text = config("URL", 'ping_interval = "100ms"\nping_timeout = "100ms"')
    text = text.replace('plugin = "collectors:Collect"\n[handlers.dlq]', _SLOW + "[handlers.dlq]")
    server = RawServer(peer)
    with capture_logs() as logs:
        async with server.serve() as url, running(text.replace("URL", url)):
            await wait_until(lambda: len(Collect.seen["sink"]) == total, timeout=30)
    assert ids() == list(range(1, total + 1))
    assert server.connections == 1
    assert not events(logs, "keepalive_timeout")


async def test_stop_while_reading_is_paused_still_completes_the_close_handshake() -> None:
    """A full handler queue pauses the socket; a stop must read the peer's close reply
    anyway, not wait ``close_timeout`` (5 s here) for a reply it cannot read."""
    closes: list[bytes] = []
    burst = b"".join(frame(OP_TEXT, tick(n)) for n in range(1, 201))

    async def peer(session: RawSession) -> None:
        async def flood() -> None:
            for _ in range(500):  # until the close frame comes (bounded)
                await session.send(burst)

        writer = asyncio.ensure_future(flood())
        try:
            while True:
                opcode, payload = await session.read_frame()
                if opcode == OP_CLOSE:
                    closes.append(payload)
                    writer.cancel()
                    await session.send(frame(OP_CLOSE, payload))
                    return
        finally:
            writer.cancel()

    text = config("URL").replace('close_timeout = "500ms"', 'close_timeout = "5s"')
    text = text.replace('plugin = "collectors:Collect"\n[handlers.dlq]', _SLOW + "[handlers.dlq]")
    server = RawServer(peer)
    async with server.serve() as url:
        async with running(text.replace("URL", url)):
            await wait_until(lambda: len(Collect.seen["sink"]) >= 20, timeout=10)
            stopping = time.monotonic()
        stopped_in = time.monotonic() - stopping
        await wait_until(lambda: bool(closes))
    assert closes == [close_payload(1000)]
    assert stopped_in < 4.0, stopped_in  # the handshake completed: no close_timeout


class _CountedReads(asyncio.BufferedProtocol):
    """A buffered protocol in front of another, recording the bytes of each read."""

    def __init__(self, inner: Any, reads: list[int]) -> None:
        self.inner = inner
        self.reads = reads

    def get_buffer(self, sizehint: int) -> Any:
        return self.inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.reads.append(nbytes)
        self.inner.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def test_one_socket_read_is_at_most_read_size_bytes() -> None:
    """A read's frames are parsed in one go with nothing else running: the read size
    bounds how long a flood holds the loop (a slow handler's timer waits that long)."""
    limit = READ_SIZE
    burst = b"".join(frame(OP_TEXT, tick(n)) for n in range(1, 30_001))  # ~1 MiB at once
    assert len(burst) > 3 * limit
    go = anyio.Event()
    reads: list[int] = []

    async def peer(session: RawSession) -> None:
        await go.wait()
        await session.send(burst)
        await session.answer_control()

    server = RawServer(peer)
    async with server.serve() as url, running(config(url)) as svc:
        await wait_until(lambda: svc.connections["up"].connected)
        socket: Any = svc.connections["up"]._ws.transport  # type: ignore[union-attr]
        protocol: Any = socket.get_protocol()
        # White-box: count what the socket hands the frame reader per read.
        socket.set_protocol(_CountedReads(protocol, reads))
        go.set()
        await wait_until(lambda: len(Collect.seen["sink"]) == 30_000, timeout=20)
    assert ids() == list(range(1, 30_001))
    assert sum(reads) >= len(burst)
    assert max(reads) <= limit
    assert len(reads) >= len(burst) // limit


async def test_the_fast_frame_path_leaves_websockets_every_frame_but_plain_data() -> None:
    """Plain data frames are split out of the reads by the frame reader, in order,
    whatever the read boundaries (inside a header, inside a length, inside a payload,
    a frame over many reads); a ping and a fragmented message reach websockets' parser
    whole and do what they always do."""
    import random

    rng = random.Random(7)
    plain = [frame(OP_TEXT, tick(n)) for n in range(1, 51)]
    # 300 bytes: a 16-bit length; valid JSON with trailing spaces.
    plain.append(frame(OP_TEXT, tick(51) + b" " * (300 - len(tick(51)))))
    ping = frame(OP_PING, b"p1")
    body = tick(52)
    fragments = (
        frame(OP_TEXT, body[:5], fin=False)
        + frame(OP_CONT, body[5:9], fin=False)
        + frame(OP_CONT, body[9:])
    )
    big_body = json.dumps({"type": "tick", "id": 53, "pad": "x" * 100_000}).encode()
    big = frame(OP_TEXT, big_body)  # a 64-bit length, over several reads
    later = b"".join(frame(OP_TEXT, tick(n)) for n in range(54, 101))
    first = b"".join(plain[:25]) + ping + b"".join(plain[25:]) + fragments
    go = anyio.Event()
    pongs: list[bytes] = []
    fed: list[int] = []

    async def peer(session: RawSession) -> None:
        await go.wait()
        pos = 0
        while pos < len(first):  # cut anywhere: headers, lengths and payloads split
            step = rng.randint(1, 400)
            await session.send(first[pos : pos + step])
            await session.flushed()
            await anyio.sleep(0.001)
            pos += step
        opcode, payload = await session.read_frame()
        if opcode == OP_PONG:
            pongs.append(payload)
        await session.send(big)
        await session.flushed()
        await anyio.sleep(0.2)
        await session.send(later)
        await session.answer_control()

    server = RawServer(peer)
    text = config("URL")
    text = text.replace('max_frame_size = "64KiB"', 'max_frame_size = "1MiB"')
    async with server.serve() as url, running(text.replace("URL", url)) as svc:
        await wait_until(lambda: svc.connections["up"].connected)
        connection: Any = svc.connections["up"]._ws.transport.get_protocol()  # type: ignore[union-attr]
        receive = connection.protocol.receive_data

        def receive_data(data: bytes) -> None:  # what websockets' parser is given
            fed.append(len(data))
            receive(data)

        connection.protocol.receive_data = receive_data
        go.set()
        await wait_until(lambda: len(Collect.seen["sink"]) == 100, timeout=10)
        assert connection._fast  # back on the plain path after the fragments
        # websockets' parser saw the ping and the three fragments, whole, and nothing
        # else: every plain frame (the big one too, gathered over many reads) was
        # split out by the reader.
        assert sum(fed) == len(ping) + len(fragments)
    assert ids() == list(range(1, 101))
    assert Collect.seen["sink"][51].body == json.loads(body)  # the fragmented one, whole
    assert Collect.seen["sink"][52].body["pad"] == "x" * 100_000  # the big one, whole
    assert pongs == [b"p1"]  # websockets answered the ping
    assert sum(fed) > len(ping) + len(fragments)  # the close frame, at the end


# -- handshake -------------------------------------------------------------------------


async def test_credentials_in_the_url_are_sent_as_basic_auth() -> None:
    seen: list[str | None] = []

    def record(ws: ServerConnection, request: Request) -> Response | None:
        seen.append(request.headers.get("Authorization"))
        return None

    async def accept(ws: ServerConnection) -> None:
        await ws.send(tick(1).decode())
        await ws.wait_closed()

    with capture_logs() as logs:
        async with ws_server(accept, record) as url:
            secret = url.replace("ws://", "ws://feed%40user:s3cr3t@")
            async with running(config(secret)):
                await wait_until(lambda: len(Collect.seen["sink"]) == 1)
    assert seen == ["Basic " + base64.b64encode(b"feed@user:s3cr3t").decode()]
    assert "s3cr3t" not in repr(logs)


async def test_subprotocol_is_offered_and_the_servers_choice_reported() -> None:
    offered: list[str | None] = []

    async def accept(ws: ServerConnection) -> None:
        offered.append(ws.request.headers.get("Sec-WebSocket-Protocol") if ws.request else None)
        await ws.send(tick(1).decode())
        await ws.wait_closed()

    text = config("URL", 'subprotocols = ["v1.feed", "v2.feed"]')
    with capture_logs() as logs:
        async with (
            ws_server(accept, subprotocols=["v2.feed"]) as url,  # type: ignore[list-item]
            running(text.replace("URL", url)),
        ):
            await wait_until(lambda: len(Collect.seen["sink"]) == 1)
    assert offered == ["v1.feed, v2.feed"]
    assert events(logs, "connected")[0]["subprotocol"] == "v2.feed"


@pytest.mark.parametrize("status", [429, 503])
async def test_refused_handshake_reports_status_and_retry_after(status: int) -> None:
    attempts: list[float] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(time.monotonic())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            f"HTTP/1.1 {status} Busy\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with capture_logs() as logs:
            async with running(config(f"ws://127.0.0.1:{port}/")):
                await wait_until(lambda: len(attempts) >= 2, timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    assert attempts[1] - attempts[0] >= 0.95
    rejected = events(logs, "handshake_rejected")[0]
    assert (rejected["status"], rejected["retry_after"]) == (status, 1.0)


# -- the websocket sink reaches into the connection's transport ------------------------


@pytest.mark.parametrize("confirm", ["pong", "write"])
async def test_websocket_sink_forwards_and_confirms(confirm: str) -> None:
    target = ScriptedUpstream()
    async with target.serve() as url:
        handler: Any = build_handler(
            "websocket",
            {"url": url, "compression": "none", "confirm": confirm},
        )
        async with run_handler(handler):
            with anyio.fail_after(5):
                await handler.handle(message({}, raw=b"\x01\x00\x00\x00{}"))
                await handler.handle(message({"type": "news"}, raw='{"type": "news"}'))
            await wait_until(lambda: len(target.received) == 2)
    assert target.received == [b"\x01\x00\x00\x00{}", '{"type": "news"}']


# -- config ------------------------------------------------------------------------------


def test_picows_is_refused_naming_the_replacement() -> None:
    text = '[connections.up]\nurl = "ws://127.0.0.1:1/"\ntransport = "picows"\n'
    with pytest.raises(ConfigError) as caught:
        loads(text + '[routes.all]\nhandlers = ["h"]\n[handlers.h]\nplugin = "log"\n')
    (issue,) = caught.value.issues
    assert issue.path == "connections.up.transport"
    assert 'use transport = "websockets" (the default)' in issue.message
    assert issue.line == 3


def test_check_refuses_picows_in_one_line_naming_the_replacement(tmp_path: Path) -> None:
    config = tmp_path / "old.toml"
    config.write_text(
        '[connections.up]\nurl = "ws://127.0.0.1:1/"\ntransport = "picows"\n'
        'compression = "none"\n[routes.all]\nhandlers = ["h"]\n[handlers.h]\nplugin = "log"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "wsroute.cli", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "connections.up.transport" in lines[0]
    assert 'use transport = "websockets" (the default)' in lines[0]


def test_unknown_transport_names_the_choices() -> None:
    text = '[connections.up]\nurl = "ws://127.0.0.1:1/"\ntransport = "aiohttp"\n'
    with pytest.raises(ConfigError) as caught:
        loads(text)
    (issue,) = caught.value.issues
    assert issue.path == "connections.up.transport"
    assert "websockets" in issue.message
