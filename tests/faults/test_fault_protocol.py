"""Faults in what the upstream sends: frames too big, bombs, protocol violations, garbage.

A frame the WebSocket layer refuses ends the connection with the matching
close code; the daemon logs it, reconnects, and loses nothing it had read.
A frame that arrives fine but does not decode, or that no route names, keeps
the connection up and is dead-lettered or counted.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import MutableMapping
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection

from wsroute.service import Service
from wsroute.testing import wait_until

from collectors import Collect
from conftest import running
from peers import (
    OP_BINARY,
    OP_CONT,
    OP_TEXT,
    RawServer,
    RawSession,
    deflate_bomb,
    deflated,
    events,
    frame,
    ticks_then,
    vmrss,
    ws_server,
)

pytestmark = pytest.mark.anyio

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _reset_collectors() -> None:
    Collect.reset()


CONFIG = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "2s"

[connections.up]
url = "URL"
close_timeout = "500ms"
max_frame_size = "MAX"
reconnect = { initial = "50ms", max = "200ms" }

[routes.data]
key = "tick"
handlers = ["sink"]

[handlers.sink]
plugin = "collectors:Collect"
[handlers.dlq]
plugin = "collectors:Collect"
"""


def config(url: str, max_frame_size: str = "1MiB") -> str:
    return CONFIG.replace("URL", url).replace("MAX", max_frame_size)


def tick(number: int) -> str:
    return json.dumps({"type": "tick", "id": number})


def assert_balanced(service: Service) -> None:
    for name, runner in service.runners.items():
        assert runner.balanced(), (name, runner.snapshot())


def two_sessions(bad: bytes, before: int = 5, after: int = 5) -> RawServer:
    """:func:`peers.ticks_then`, with permessage-deflate on offer (for the bomb)."""
    return ticks_then(bad, before, after, deflate=True)


async def run_two_sessions(
    server: RawServer, max_frame_size: str = "1MiB", total: int = 10
) -> tuple[list[MutableMapping[str, Any]], Service]:
    with capture_logs() as logs:
        async with server.serve() as url, running(config(url, max_frame_size)) as svc:
            await wait_until(lambda: len(Collect.seen["sink"]) >= total, timeout=8)
            assert server.connections == 2
            assert svc.connections["up"].seq == total
            assert_balanced(svc)
    # the refused frame was never read: seq runs on without a gap
    assert [m.seq for m in Collect.seen["sink"]] == list(range(1, total + 1))
    assert [m.body["id"] for m in Collect.seen["sink"]] == list(range(1, total + 1))
    assert not Collect.seen["dlq"]
    assert not events(logs, "session_crashed")
    return logs, svc


# -- 5. too big ----------------------------------------------------------------


async def test_frame_over_max_frame_size_closes_1009_and_reconnects() -> None:
    oversized = frame(OP_BINARY, b"x" * (100 * 1024))
    logs, _ = await run_two_sessions(two_sessions(oversized), max_frame_size="64KiB")
    lost = events(logs, "connection_lost")[0]
    assert lost["code"] == 1009
    assert lost["reason"] == "frame with 102400 bytes exceeds limit of 65536 bytes"
    assert lost["log_level"] == "warning"
    assert lost["seq"] == 5


async def test_compression_bomb_is_cut_at_max_frame_size_and_memory_stays_bounded() -> None:
    expanded = 256 * MiB  # 256 × max_frame_size, from a frame of about 256 KiB
    bomb = frame(OP_TEXT, deflate_bomb(expanded), rsv1=True)
    assert len(bomb) < MiB
    server = two_sessions(bomb)
    peak = 0
    before = vmrss()

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, vmrss())
            await anyio.sleep(0.002)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        logs, _ = await run_two_sessions(server)
        tg.cancel_scope.cancel()
    after = vmrss()
    assert server.sessions[0].deflate  # permessage-deflate was negotiated: the bomb was live
    lost = events(logs, "connection_lost")[0]
    assert lost["code"] == 1009
    assert lost["reason"] == "frame exceeds limit of 1048576 bytes"
    growth = max(peak, after) - before
    print(
        f"\nRSS bomb: before={before / MiB:.1f} MiB peak={peak / MiB:.1f} MiB "
        f"after={after / MiB:.1f} MiB growth={growth / MiB:.1f} MiB"
    )
    assert growth < 32 * MiB  # the 256 MiB never materialised


async def test_compressed_messages_whole_and_fragmented_are_inflated_in_order() -> None:
    first, second, third = (tick(n).encode() for n in (1, 2, 3))
    second = second[:-1] + b', "pad": "' + b"ab" * 500 + b'"}'  # compressible, > 1 fragment
    packed = deflated(second)
    cut1, cut2 = len(packed) // 3, 2 * len(packed) // 3

    async def peer(session: RawSession) -> None:
        assert session.deflate
        await session.send(frame(OP_TEXT, deflated(first), rsv1=True))
        await session.send(
            frame(OP_TEXT, packed[:cut1], fin=False, rsv1=True)  # RSV1 on the first only
            + frame(OP_CONT, packed[cut1:cut2], fin=False)
            + frame(OP_CONT, packed[cut2:])
        )
        await session.text(third.decode())  # an uncompressed message in between is fine
        await session.answer_control()

    server = RawServer(peer, deflate=True)
    async with server.serve() as url, running(config(url)) as svc:
        await wait_until(lambda: len(Collect.seen["sink"]) == 3)
        assert_balanced(svc)
    assert [m.body["id"] for m in Collect.seen["sink"]] == [1, 2, 3]
    assert Collect.seen["sink"][1].raw == second.decode()
    assert server.connections == 1


# -- 6. protocol violations ------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "code", "reason"),
    [
        pytest.param(
            frame(OP_TEXT, b'{"type": "tick", "id": "\xff\xfe"}'),
            1007,
            "invalid start byte at position 24",
            id="invalid-utf8",
        ),
        pytest.param(frame(0x3, b"reserved"), 1002, "invalid opcode", id="reserved-opcode"),
        pytest.param(frame(0x9, b"p" * 200), 1002, "control frame too long", id="big-control"),
        pytest.param(
            bytes([0x81, 0x80 | 4]) + b"\x01\x02\x03\x04" + b"abcd",
            1002,
            "incorrect masking",
            id="masked-server-frame",
        ),
    ],
)
async def test_protocol_violation_closes_with_its_code_and_reconnects(
    bad: bytes, code: int, reason: str
) -> None:
    """websockets fails the connection; the log names the code and reason it sent."""
    logs, svc = await run_two_sessions(two_sessions(bad))
    lost = events(logs, "connection_lost")[0]
    assert lost["code"] == code
    assert lost["reason"] == reason
    assert lost["seq"] == 5
    assert svc.connections["up"].stats.reconnects == 1
    assert events(logs, "reconnect_scheduled")


# -- 7. frames that arrive fine but do not decode, or match no route ---------------

STRUCT_CONFIG = """
[daemon]
dead_letter = "dlq"
UNMATCHED
[connections.up]
url = "URL"
codec = "exchange"
[codecs.exchange]
type = "struct"
header = "<i"
fields = ["opcode"]
[routes.ticks]
key = 1
handlers = ["h"]
[handlers.h]
plugin = "collectors:Collect"
[handlers.dlq]
plugin = "collectors:Collect"
[handlers.unm]
plugin = "collectors:Collect"
"""


@pytest.mark.parametrize("unmatched_handler", [True, False], ids=["unmatched-handler", "counted"])
async def test_undecodable_and_unrouted_frames_keep_the_connection_up(
    unmatched_handler: bool,
) -> None:
    connections = 0
    frames: list[str | bytes] = [
        "{not json",  # text frame, broken JSON
        b"\x01\x00",  # binary shorter than its 4-byte header
        struct.pack("<i", 1) + b"[1, 2",  # header fine, body broken
        struct.pack("<i", 99) + b'{"unknown": true}',  # an opcode no route names
        json.dumps({"type": "nobody"}),  # a text key no route names
        struct.pack("<i", 1) + b'{"ok": 1}',
        struct.pack("<i", 1) + b'{"ok": 2}',
    ]

    async def upstream(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        for data in frames:
            await ws.send(data)
        await ws.wait_closed()

    text = STRUCT_CONFIG.replace("UNMATCHED", 'unmatched = "unm"' if unmatched_handler else "")
    with capture_logs() as logs:
        async with ws_server(upstream) as url, running(text.replace("URL", url)) as svc:
            await wait_until(lambda: len(Collect.seen["h"]) == 2, timeout=5)
            await wait_until(lambda: len(Collect.seen["dlq"]) == 3, timeout=5)
            if unmatched_handler:
                await wait_until(lambda: len(Collect.seen["unm"]) == 2, timeout=5)
            conn = svc.connections["up"]
            assert conn.seq == len(frames)
            assert conn.stats.decode_errors == 3
            assert svc.dispatcher.unmatched["up"] == 2
            assert_balanced(svc)
    assert connections == 1  # garbage does not cost the connection
    dead = Collect.seen["dlq"]
    assert [m.seq for m in dead] == [1, 2, 3]
    assert {m.dead_letter.reason for m in dead if m.dead_letter} == {"decode_error"}
    assert all(m.dead_letter and m.dead_letter.error for m in dead)
    assert [m.raw for m in dead] == frames[:3]  # the raw frame, for a later replay
    assert [m.seq for m in Collect.seen["h"]] == [6, 7]
    if unmatched_handler:
        assert [(m.seq, m.key) for m in Collect.seen["unm"]] == [(4, 99), (5, "nobody")]
    else:
        assert not Collect.seen["unm"]
    # every frame read is accounted for: handled, dead-lettered or unmatched
    handled, dead_lettered, unmatched = 2, 3, 2
    assert handled + dead_lettered + unmatched == len(frames)
    assert len(events(logs, "frame_undecodable")) == 3
    totals = events(logs, "connection_totals")[0]
    assert totals["frames"] == len(frames)
    assert totals["decode_errors"] == 3
    assert totals["unmatched"] == 2
    assert not events(logs, "delivery_unbalanced")


async def test_one_read_with_undecodable_and_unrouted_frames_among_good_ones() -> None:
    """A socket read's frames are decoded and routed together: an undecodable or
    unrouted frame among them is dead-lettered or counted in its place, and the
    frames after it are delivered, numbered on."""
    tick = struct.pack("<i", 1)
    sequence = [
        (OP_BINARY, tick + b'{"ok": 1}'),
        (OP_TEXT, b"{not json"),
        (OP_BINARY, struct.pack("<i", 99) + b"{}"),
        (OP_BINARY, tick + b'{"ok": 2}'),
        (OP_BINARY, tick + b'{"ok": 3}'),
        (OP_BINARY, b"\x01"),
        (OP_BINARY, tick + b'{"ok": 4}'),
    ]

    async def peer(session: RawSession) -> None:
        control = asyncio.ensure_future(session.answer_control())
        await asyncio.sleep(0.2)  # apart from the handshake's response: the fast path reads it
        await session.send(b"".join(frame(op, data) for op, data in sequence))  # one write
        await control

    text = STRUCT_CONFIG.replace("UNMATCHED", 'unmatched = "unm"')
    server = RawServer(peer)
    async with server.serve() as url, running(text.replace("URL", url)) as svc:
        await wait_until(lambda: len(Collect.seen["h"]) == 4, timeout=5)
        await wait_until(lambda: len(Collect.seen["dlq"]) == 2, timeout=5)
        await wait_until(lambda: len(Collect.seen["unm"]) == 1, timeout=5)
        assert svc.connections["up"].seq == len(sequence)
        assert_balanced(svc)
    assert [m.seq for m in Collect.seen["h"]] == [1, 4, 5, 7]
    assert [m.body["ok"] for m in Collect.seen["h"]] == [1, 2, 3, 4]
    assert [m.seq for m in Collect.seen["dlq"]] == [2, 6]
    assert [m.raw for m in Collect.seen["dlq"]] == ["{not json", b"\x01"]
    assert [(m.seq, m.key) for m in Collect.seen["unm"]] == [(3, 99)]
    assert server.connections == 1


async def test_codec_that_raises_a_non_decode_error_dead_letters_the_frame() -> None:
    """A codec bug (``KeyError`` instead of ``DecodeError``) costs one frame, never silently."""
    connections = 0
    frames = [tick(1), json.dumps({"type": "tick", "boom": 1}), tick(3)]

    async def upstream(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            for data in frames:
                await ws.send(data)
        await ws.wait_closed()

    text = """
[daemon]
dead_letter = "dlq"
[connections.up]
url = "URL"
codec = "buggy"
reconnect = { initial = "50ms", max = "100ms" }
[codecs.buggy]
type = "faultplugins:BuggyCodec"
[routes.data]
key = "tick"
handlers = ["sink"]
[handlers.sink]
plugin = "collectors:Collect"
[handlers.dlq]
plugin = "collectors:Collect"
"""
    with capture_logs() as logs:
        async with ws_server(upstream) as url, running(text.replace("URL", url)) as svc:
            await wait_until(lambda: len(Collect.seen["sink"]) == 2, timeout=5)
            await wait_until(lambda: len(Collect.seen["dlq"]) == 1, timeout=5)
            assert svc.connections["up"].stats.decode_errors == 1
            assert_balanced(svc)
    assert connections == 1
    assert not events(logs, "session_crashed")
    letter = Collect.seen["dlq"][0]
    assert letter.seq == 2
    assert letter.raw == frames[1]
    assert letter.dead_letter is not None
    assert letter.dead_letter.reason == "decode_error"
    assert "KeyError" in (letter.dead_letter.error or "")
    assert [m.seq for m in Collect.seen["sink"]] == [1, 3]
