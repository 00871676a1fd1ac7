"""The frame reader's verdicts against websockets' own, on hostile byte streams.

For every stream, the expected verdict is computed in the same test from
websockets alone: its public sans-I/O ``ClientProtocol`` fed the same bytes
(one byte at a time, so each frame is judged the moment it is complete), with
the checks of websockets' own receive loop on whole messages (UTF-8 of text:
1007; too many fragments: 1009). The reader is then run over a real socket
(a hand-written upstream on 127.0.0.1 that writes the stream in chosen
pieces, so that reads are cut anywhere, then half-closes) and must give the
same verdict: the same messages delivered, the same close frame sent back,
the same close code reported — and nothing after a failure.

Every test runs on both event loops (asyncio's selector loop and uvloop).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import struct
import sys
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from wsroute.config import ConnectionSection, loads
from wsroute.transport import open_transport
from wsroute.wire import MAX_FRAGMENTS, Data

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
from peers import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawServer, RawSession

pytestmark = pytest.mark.anyio

LIMIT = 1024  # max_frame_size of every test here: "exactly" and "+1" stay small


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return ("asyncio", {"use_uvloop": True}) if request.param == "uvloop" else "asyncio"


# -- frames, valid or not -------------------------------------------------------------


def raw_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    width: int | None = None,
    declared: int | None = None,
) -> bytes:
    """One server frame, built bit by bit: ``rsv`` is the three reserved bits (0-7),
    ``mask`` masks it (servers must not), ``width`` forces the length's encoding
    (7, 16 or 64 bits: non-minimal lengths), ``declared`` lies about the length."""
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)
    length = len(payload) if declared is None else declared
    if width is None:
        width = 7 if length < 126 else 16 if length < 1 << 16 else 64
    mask_bit = 0x80 if mask is not None else 0
    if width == 7:
        header = struct.pack("!BB", first, mask_bit | length)
    elif width == 16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if mask is not None:
        payload = mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + payload


def close_body(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def text(payload: str | bytes) -> bytes:
    return raw_frame(OP_TEXT, payload.encode() if isinstance(payload, str) else payload)


def ticks(first: int, count: int) -> bytes:
    return b"".join(text(f'{{"id": {n}}}') for n in range(first, first + count))


# -- the verdicts ---------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    delivered: tuple[Data, ...]
    #: The close code of the close frame the client sent (1005: an empty one), if any.
    sent: int | None
    #: The code wsroute reports (the one it sent when it failed the connection, else
    #: the peer's, else 1006).
    reported: int | None


def websockets_alone(stream: bytes, limit: int = LIMIT) -> Verdict:
    """What websockets does with ``stream`` followed by the end of the TCP stream."""
    protocol = ClientProtocol(parse_uri("ws://upstream/"), state=State.OPEN, max_size=limit)
    delivered: list[Data] = []
    parts: list[bytes] | None = None
    is_text = False
    for i in range(len(stream)):
        protocol.receive_data(stream[i : i + 1])
        for event in protocol.events_received():
            assert isinstance(event, Frame)
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                parts = [bytes(event.data)]
                is_text = event.opcode is Opcode.TEXT
            elif event.opcode is Opcode.CONT:
                assert parts is not None
                if len(parts) >= MAX_FRAGMENTS:
                    protocol.fail(1009, "too many fragments")
                    parts = None
                    continue
                parts.append(bytes(event.data))
            else:
                continue
            if not event.fin:
                continue
            assert parts is not None
            message = b"".join(parts)
            parts = None
            if is_text:
                try:
                    delivered.append(message.decode())
                except UnicodeDecodeError as exc:
                    protocol.fail(1007, f"{exc.reason} at position {exc.start}")
            else:
                delivered.append(message)
        protocol.data_to_send()
    protocol.receive_eof()
    closed = protocol.close_exc
    rcvd, sent = closed.rcvd, closed.sent
    if rcvd is None and sent is not None and sent.code not in (1000, 1001):
        reported = int(sent.code)
    elif rcvd is None:
        reported = 1006
    else:
        reported = int(rcvd.code)
    return Verdict(tuple(delivered), None if sent is None else int(sent.code), reported)


@dataclass
class Script:
    """What the upstream writes on one connection: ``pieces``, each flushed and
    followed by a short pause (so that the client reads them apart), then EOF."""

    pieces: list[bytes]
    closes: list[int] = field(default_factory=list)


class Upstream:
    """A raw upstream playing one script per connection, recording the client's close."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.scripts: deque[Script] = deque()
        self.server = RawServer(self._play)
        self.done: dict[int, asyncio.Event] = {}

    async def _play(self, session: RawSession) -> None:
        script = self.scripts.popleft()
        try:
            for piece in script.pieces:
                await session.send(piece)
                await session.flushed()
                await asyncio.sleep(0.001)
            session.writer.write_eof()
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                async with asyncio.timeout(10):
                    while True:
                        opcode, payload = await session.read_frame()
                        if opcode == OP_CLOSE:
                            code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                            script.closes.append(code)
        finally:
            self.done[session.number].set()

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[ConnectionSection]:
        async with self.server.serve() as url:
            text = (
                f'[connections.up]\nurl = "{url}"\ncompression = "none"\n'
                f'max_frame_size = "{self.limit}B"\nclose_timeout = "2s"\n'
                '[routes.all]\nhandlers = ["h"]\n[handlers.h]\nplugin = "log"\n'
            )
            yield loads(text).connections["up"]

    async def verdict(self, section: ConnectionSection, pieces: list[bytes]) -> Verdict:
        """The reader's verdict on one connection playing ``pieces``."""
        script = Script(pieces)
        self.scripts.append(script)
        number = self.server.connections + 1
        done = self.done[number] = asyncio.Event()
        delivered: list[Data] = []
        with anyio.fail_after(10):
            transport = await open_transport(section, None)
            await transport.read(delivered.extend)
            await transport.close()
            await done.wait()
        reported, _ = transport.close_details()
        sent = script.closes[0] if script.closes else None
        assert len(script.closes) <= 1, script.closes
        return Verdict(tuple(delivered), sent, reported)


def cuts(stream: bytes, rng: random.Random, count: int) -> list[bytes]:
    """``stream`` in ``count + 1`` pieces cut at random places."""
    points = sorted(rng.sample(range(1, len(stream)), min(count, len(stream) - 1)))
    edges = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges) if b > a]


# -- the hostile matrix ---------------------------------------------------------------

_BEFORE = ticks(1, 3)
_AFTER = ticks(4, 3)
_PING = raw_frame(OP_PING, b"are you there")
_FRAGMENTED = (
    raw_frame(OP_TEXT, b'{"fr', fin=False)
    + raw_frame(OP_PING, b"mid")
    + raw_frame(OP_CONT, b"ag", fin=False)
    + raw_frame(OP_CONT, b'": 1}')
)
_E_ACUTE = "é".encode()

MATRIX: dict[str, bytes] = {
    "masked-data": raw_frame(OP_TEXT, b'{"id": 0}', mask=b"\x01\x02\x03\x04"),
    "masked-ping": raw_frame(OP_PING, b"p", mask=b"\x01\x02\x03\x04"),
    "rsv1-data": raw_frame(OP_TEXT, b'{"id": 0}', rsv=4),
    "rsv2-data": raw_frame(OP_BINARY, b"x", rsv=2),
    "rsv3-data": raw_frame(OP_BINARY, b"x", rsv=1),
    "rsv1-ping": raw_frame(OP_PING, b"p", rsv=4),
    "rsv3-close": raw_frame(OP_CLOSE, close_body(1000), rsv=1),
    "opcode-3": raw_frame(0x3, b"x"),
    "opcode-7": raw_frame(0x7, b"x"),
    "opcode-11": raw_frame(0xB, b"x"),
    "opcode-15": raw_frame(0xF, b""),
    "ping-125": raw_frame(OP_PING, b"p" * 125),
    "ping-126": raw_frame(OP_PING, b"p" * 126),
    "pong-126": raw_frame(OP_PONG, b"p" * 126),
    "close-126": raw_frame(OP_CLOSE, close_body(1000, b"r" * 124)),
    "fragmented-ping": raw_frame(OP_PING, b"p", fin=False) + raw_frame(OP_CONT, b"q"),
    "fragmented-close": raw_frame(OP_CLOSE, close_body(1000), fin=False),
    "continuation-without-start": raw_frame(OP_CONT, b"orphan"),
    "new-message-inside-one": raw_frame(OP_TEXT, b"{", fin=False) + raw_frame(OP_TEXT, b"}"),
    "binary-inside-text": raw_frame(OP_TEXT, b"{", fin=False) + raw_frame(OP_BINARY, b"}"),
    "invalid-utf8": text(b'{"id": "\xff"}'),
    "invalid-utf8-across-fragments": raw_frame(OP_TEXT, b'{"e": "' + _E_ACUTE[:1], fin=False)
    + raw_frame(OP_CONT, b"\xff" + b'"}'),
    "utf8-split-across-fragments": raw_frame(OP_TEXT, b'{"e": "' + _E_ACUTE[:1], fin=False)
    + raw_frame(OP_CONT, _E_ACUTE[1:] + b'"}'),
    "truncated-utf8": text(b'{"e": "\xc3'),
    **{
        f"close-{code}": raw_frame(OP_CLOSE, close_body(code, b"bye"))
        for code in (0, 999, 1000, 1001, 1004, 1005, 1006, 1012, 1015, 1016, 2999, 3000, 4999)
    },
    "close-5000": raw_frame(OP_CLOSE, close_body(5000)),
    "close-65535": raw_frame(OP_CLOSE, close_body(65535)),
    "close-1-byte": raw_frame(OP_CLOSE, b"\x03"),
    "close-empty": raw_frame(OP_CLOSE, b""),
    "close-reason-not-utf8": raw_frame(OP_CLOSE, close_body(1000, b"\xff\xfe")),
    "data-after-close": raw_frame(OP_CLOSE, close_body(1000)) + ticks(90, 3),
    "ping-after-close": raw_frame(OP_CLOSE, close_body(1001)) + _PING,
    "close-inside-a-fragmented-message": raw_frame(OP_TEXT, b"{", fin=False)
    + raw_frame(OP_CLOSE, close_body(1000)),
    "64-bit-length-top-bit": raw_frame(OP_BINARY, b"", declared=1 << 63, width=64),
    "64-bit-length-huge": raw_frame(OP_BINARY, b"", declared=(1 << 62) + 5, width=64),
    "non-minimal-16-bit": raw_frame(OP_TEXT, b'{"id": 0}', width=16),
    "non-minimal-64-bit": raw_frame(OP_TEXT, b'{"id": 0}', width=64),
    "non-minimal-ping": raw_frame(OP_PING, b"p", width=64),
    "max-frame-size-exactly": raw_frame(OP_BINARY, b"x" * LIMIT) + _AFTER,
    "max-frame-size-plus-1": raw_frame(OP_BINARY, b"x" * (LIMIT + 1)) + _AFTER,
    "text-max-frame-size-plus-1": text(b"y" * (LIMIT + 1)) + _AFTER,
    "message-over-the-limit-in-fragments": raw_frame(OP_BINARY, b"x" * 600, fin=False)
    + raw_frame(OP_CONT, b"x" * 600),
    "message-at-the-limit-in-fragments": raw_frame(OP_BINARY, b"x" * 600, fin=False)
    + raw_frame(OP_CONT, b"x" * (LIMIT - 600)),
    "too-many-fragments": raw_frame(OP_TEXT, b"{", fin=False)
    + raw_frame(OP_CONT, b"", fin=False) * MAX_FRAGMENTS
    + raw_frame(OP_CONT, b"}"),
    "fragments-with-pings": _FRAGMENTED,
    "empty-frames": raw_frame(OP_TEXT, b"") + raw_frame(OP_BINARY, b""),
    "unsolicited-pong": raw_frame(OP_PONG, b"?"),
}


@pytest.mark.parametrize("case", sorted(MATRIX))
async def test_the_hostile_matrix_gets_websockets_verdict(case: str) -> None:
    """Each bad frame between good ones, whole in one read and cut at random places
    (the reader's split meets it across reads): the verdict is websockets'."""
    stream = _BEFORE + MATRIX[case] + _AFTER
    expected = websockets_alone(stream)
    rng = random.Random(case)
    upstream = Upstream()
    async with upstream.serve() as section:
        whole = await upstream.verdict(section, [stream])
        cut = await upstream.verdict(section, cuts(stream, rng, 4))
        apart = await upstream.verdict(section, [_BEFORE, MATRIX[case] + _AFTER])
    assert whole == expected, case
    assert cut == expected, case
    assert apart == expected, case


async def test_the_matrix_says_what_it_should() -> None:
    """The oracle itself: a few verdicts written out, so a broken oracle cannot pass."""
    good = websockets_alone(_BEFORE)
    assert good == Verdict(('{"id": 1}', '{"id": 2}', '{"id": 3}'), None, 1006)
    masked = websockets_alone(_BEFORE + MATRIX["masked-data"] + _AFTER)
    assert masked.delivered == good.delivered
    assert masked.sent == masked.reported == 1002
    utf8 = websockets_alone(_BEFORE + MATRIX["invalid-utf8"] + _AFTER)
    assert utf8.delivered == good.delivered
    assert utf8.sent == 1007
    big = websockets_alone(MATRIX["max-frame-size-plus-1"])
    assert big.delivered == ()
    assert big.sent == 1009
    closed = websockets_alone(MATRIX["close-1001"] + _AFTER)
    assert closed == Verdict((), 1001, 1001)


async def test_a_stream_cut_at_every_byte_boundary() -> None:
    """The upstream ends the TCP stream after every possible prefix of a stream of
    plain frames, a ping, fragments and a close: the reader's verdict on each prefix
    is websockets'."""
    stream = ticks(1, 2) + _FRAGMENTED + raw_frame(OP_BINARY, b"b" * 130) + _PING
    stream += raw_frame(OP_CLOSE, close_body(1000, b"done"))
    upstream = Upstream()
    async with upstream.serve() as section:
        for end in range(len(stream) + 1):
            prefix = stream[:end]
            got = await upstream.verdict(section, [prefix] if prefix else [])
            assert got == websockets_alone(prefix), end


# -- the differential fuzz ------------------------------------------------------------


def _fuzz_frame(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.45:  # plain data, sometimes around the limit
        size = rng.choice([0, 1, 5, 30, 125, 126, 300, LIMIT - 1, LIMIT])
        if rng.random() < 0.5:
            return raw_frame(OP_BINARY, bytes(rng.getrandbits(8) for _ in range(size)))
        return text("é" * (size // 2) + "x" * (size % 2))
    if roll < 0.6:  # a fragmented message, maybe with a control frame inside
        opcode = rng.choice([OP_TEXT, OP_BINARY])
        body = ("ü" * rng.randint(1, 40)).encode()
        pieces = [body[i : i + rng.randint(1, 9)] for i in range(0, len(body), 9)]
        out = raw_frame(opcode, pieces[0], fin=len(pieces) == 1)
        for i, piece in enumerate(pieces[1:], 2):
            if rng.random() < 0.3:
                out += raw_frame(OP_PING, b"in")
            out += raw_frame(OP_CONT, piece, fin=i == len(pieces))
        return out
    if roll < 0.75:  # control frames
        return rng.choice(
            [
                raw_frame(OP_PING, b"ping" * rng.randint(0, 31)),
                raw_frame(OP_PONG, b"pong"),
                raw_frame(OP_PING, b""),
            ]
        )
    # something hostile
    return rng.choice(
        [
            raw_frame(OP_TEXT, b"x", mask=b"abcd"),
            raw_frame(OP_BINARY, b"x", rsv=rng.randint(1, 7)),
            raw_frame(rng.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), b"x"),
            raw_frame(OP_PING, b"p" * 126),
            raw_frame(OP_PING, b"p", fin=False),
            raw_frame(OP_CONT, b"orphan"),
            raw_frame(OP_TEXT, b"{", fin=False) + raw_frame(OP_BINARY, b"}"),
            text(bytes([rng.choice([0x80, 0xC0, 0xFF, 0xED])]) + b"abc"),
            raw_frame(OP_CLOSE, close_body(rng.choice([0, 999, 1000, 1004, 1006, 3000, 5000]))),
            raw_frame(OP_CLOSE, b"\x03"),
            raw_frame(OP_CLOSE, b""),
            raw_frame(OP_CLOSE, close_body(1000, b"\xc3")),
            raw_frame(OP_BINARY, b"", declared=rng.choice([LIMIT + 1, 1 << 40, 1 << 63]), width=64),
            raw_frame(OP_TEXT, b"ok", width=rng.choice([16, 64])),
            raw_frame(OP_BINARY, b"z" * (LIMIT + 1)),
        ]
    )


def fuzz_streams(seed: int, count: int) -> Iterable[tuple[bytes, list[int]]]:
    """``count`` random streams (mostly valid frames, sometimes one or two hostile
    ones, sometimes cut short) and where to cut each into socket writes."""
    rng = random.Random(seed)
    for _ in range(count):
        stream = b"".join(_fuzz_frame(rng) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.2:
            stream = stream[: rng.randint(0, len(stream))]
        points = sorted(rng.sample(range(1, max(2, len(stream))), min(3, max(0, len(stream) - 1))))
        yield stream, points


@pytest.mark.parametrize("seed", [11, 22])
async def test_differential_fuzz_matches_websockets_alone(seed: int) -> None:
    """200 random streams and cuts per seed (400 per event loop): the same messages, the
    same close frame sent back and the same reported code as websockets alone."""
    upstream = Upstream()
    async with upstream.serve() as section:
        for number, (stream, points) in enumerate(fuzz_streams(seed, 200)):
            edges = [0, *points, len(stream)]
            pieces = [stream[a:b] for a, b in itertools.pairwise(edges) if b > a]
            got = await upstream.verdict(section, pieces)
            assert got == websockets_alone(stream), (seed, number, stream[:200])


async def test_large_frames_cut_anywhere_match_websockets_alone() -> None:
    """Plain frames of 1-20 KiB (a read often starts with one: the reader then splits
    it without copying the read), cut at random places and at frame boundaries, with
    an invalid one and a control frame now and then: websockets' verdict."""
    limit = 64 * 1024
    rng = random.Random(4096)
    upstream = Upstream(limit)
    async with upstream.serve() as section:
        for number in range(12):
            frames = []
            for _ in range(rng.randint(3, 12)):
                size = rng.randint(1024, 20_000)
                roll = rng.random()
                if roll < 0.45:
                    frames.append(raw_frame(OP_BINARY, rng.randbytes(size)))
                elif roll < 0.9:
                    frames.append(text("ü" * (size // 2)))
                elif roll < 0.95:
                    frames.append(raw_frame(OP_PING, b"p"))
                else:
                    frames.append(text(b"x" * (size - 1) + b"\xff"))
            stream = b"".join(frames)
            bounds = list(itertools.accumulate(len(f) for f in frames))[:-1]
            points = sorted({*rng.sample(range(1, len(stream)), 4), *rng.sample(bounds, 1)})
            edges = [0, *points, len(stream)]
            pieces = [stream[a:b] for a, b in itertools.pairwise(edges) if b > a]
            got = await upstream.verdict(section, pieces)
            assert got == websockets_alone(stream, limit), number
