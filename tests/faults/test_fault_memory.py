"""A compression flood against the real daemon: memory stays within the configured bounds.

The upstream is a websockets server (permessage-deflate on) that writes text
frames of ~900 KiB — one JSON string — which deflate to about a kilobyte each,
as fast as the daemon reads them. The daemon runs as ``wsroute run`` in a
subprocess with small bounds (``queue_bytes``, ``memory_budget``) and two slow
handlers, one under ``block`` and one under ``drop-newest``. The test samples
the daemon's resident memory from /proc (``VmRSS``, and ``VmHWM`` for the
peak) and checks that the peak stays below what it was before the flood plus
the memory budget plus 64 MiB of slack, that the budget really held the
reader back, and that at shutdown every frame read is still accounted for.
Before queues were bounded in bytes, 2,000 such frames took the daemon to 3.7 GB.
"""

from __future__ import annotations

import contextlib
import signal
import textwrap
import time
from pathlib import Path

import anyio
import pytest
from test_fault_process import Run, daemon, exit_code, wait_for
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from peers import events, ws_server

pytestmark = pytest.mark.anyio

MiB = 2**20
FRAMES = 2_000
BODY = "x" * 900_000
FRAME = f'"{BODY}"'  # one JSON string: decoded, the body is a 900 KB str
QUEUE_BYTES = 32 * MiB
MEMORY_BUDGET = 64 * MiB
SLACK = 64 * MiB
FLOOD_SECONDS = 6.0

PLUGIN = '''
"""Slow handlers for the memory fault test: they sleep, count, and keep nothing."""

from dataclasses import dataclass

import anyio

from wsroute import Duration, HandlerContext, Message


class Sleepy:
    @dataclass
    class Options:
        delay: Duration = Duration(0.05)

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.delay = options.delay

    async def handle(self, message: Message) -> None:
        await anyio.sleep(self.delay)


class Discard:
    def __init__(self, options: object, ctx: HandlerContext) -> None:
        pass

    async def handle(self, message: Message) -> None:
        pass
'''

CONFIG = f"""
[daemon]
log_level = "info"
log_format = "json"
shutdown_timeout = "1s"
dead_letter = "dlq"
plugin_paths = ["{{plugins}}"]
memory_budget = "{MEMORY_BUDGET // MiB}MiB"

[connections.up]
url = "{{url}}"
codec = "json"
compression = "deflate"
max_frame_size = "1MiB"
close_timeout = "500ms"

[routes.all]
handlers = ["blocking", "dropping"]

[handlers.blocking]
plugin = "sleepy:Sleepy"
delay = "10ms"
queue_bytes = "{QUEUE_BYTES // MiB}MiB"
timeout = "0s"

[handlers.dropping]
plugin = "sleepy:Sleepy"
delay = "20ms"
queue_bytes = "{QUEUE_BYTES // MiB}MiB"
overflow = "drop-newest"
timeout = "0s"

[handlers.dlq]
plugin = "sleepy:Discard"
"""


def memory(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of a process, in bytes."""
    found = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024
    return found["VmRSS"], found["VmHWM"]


class Flood:
    """Waits for :attr:`go`, then writes ``FRAMES`` big compressible frames."""

    def __init__(self) -> None:
        self.go = anyio.Event()
        self.sent = 0
        self.connections = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        await self.go.wait()
        with contextlib.suppress(ConnectionClosed):
            while self.sent < FRAMES:
                await ws.send(FRAME)
                self.sent += 1
            await ws.wait_closed()


async def test_a_compression_flood_stays_within_the_memory_bounds(tmp_path: Path) -> None:
    run = Run(tmp_path)
    flood = Flood()
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "sleepy.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    plugins.chmod(0o700)
    # websockets' server: permessage-deflate is on by default, with context takeover.
    async with ws_server(flood.handler, max_size=2 * MiB) as url:
        run.config.write_text(CONFIG.format(plugins=plugins, url=url), encoding="utf-8")
        async with daemon(run) as proc:
            await wait_for(lambda: flood.connections == 1, 10, "the daemon to connect")
            await anyio.sleep(0.3)  # settle: imports done, handshake answered
            before, _ = memory(proc.pid)
            flood.go.set()
            peak = 0
            samples = 0
            deadline = time.monotonic() + FLOOD_SECONDS
            while time.monotonic() < deadline:
                rss, hwm = memory(proc.pid)
                peak = max(peak, rss, hwm)
                samples += 1
                await anyio.sleep(0.05)
            rss, hwm = memory(proc.pid)
            peak = max(peak, rss, hwm)
            proc.send_signal(signal.SIGTERM)
            code = await exit_code(proc, 15)
    log = run.log()
    assert code == 0, run.stderr.read_text()[-3000:]
    frames = events(log, "connection_totals")[0]["frames"]
    inflated = frames * len(FRAME)
    limit = before + MEMORY_BUDGET + SLACK
    print(
        f"\nmemory flood: server wrote {flood.sent} frames, daemon read {frames} "
        f"({inflated / MiB:.0f} MiB inflated); RSS before {before / MiB:.1f} MiB, "
        f"peak {peak / MiB:.1f} MiB (limit {limit / MiB:.0f} MiB), {samples} samples; "
        f"budget pauses logged {len(events(log, 'memory_budget_reached'))}"
    )
    assert frames > 0
    # Far more was read than the bounds allow to be held at once: the bounds did the work.
    assert inflated > 2 * (MEMORY_BUDGET + SLACK)
    assert peak < limit, f"peak RSS {peak / MiB:.1f} MiB >= {limit / MiB:.1f} MiB"
    # The two full queues reached the memory budget: the reader was paused by it.
    assert events(log, "memory_budget_reached")
    # The promise: every frame read is handled, dead-lettered or dropped, per handler.
    assert not events(log, "delivery_unbalanced")
    assert not events(log, "message_lost")
    totals = {e["handler"]: e for e in events(log, "delivery_totals")}
    for name in ("blocking", "dropping"):
        t = totals[name]
        assert t["received"] == frames, t
        assert t["in_flight"] == 0
        assert t["received"] == t["handled"] + t["dead_lettered"] + t["dropped"] + t["released"]
    assert totals["blocking"]["dropped"] == 0
    assert totals["dropping"]["dropped"] > 0
    dead = totals["blocking"]["dead_lettered"] + totals["dropping"]["dead_lettered"]
    assert totals["dlq"]["received"] == dead
