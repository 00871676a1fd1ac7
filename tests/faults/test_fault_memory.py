"""A compression flood and a deflate bomb against the real daemon: memory stays within bounds.

The upstream is a websockets server (permessage-deflate on) that writes text
frames of ~900 KiB — one JSON string — which deflate to about a kilobyte each,
as fast as the daemon reads them. The daemon runs as ``wsroute run`` in a
subprocess with small bounds (``queue_bytes``, ``memory_budget``) and two slow
handlers, one under ``block`` and one under ``drop-newest``. The test samples
the daemon's resident memory from /proc (``VmRSS``, and ``VmHWM`` for the
peak) and checks that the peak stays below what it was before the flood plus
the memory budget plus 32 MiB of slack, that the budget really held the
reader back, and that at shutdown every frame read is still accounted for.
Before queues were bounded in bytes, 2,000 such frames took the daemon to 3.7 GB;
before the frame reader bounded every read itself, uvloop (whose transports
ignore asyncio's read size) peaked 64 MiB higher than asyncio's loop.

Both run on both event loops (``[daemon] event_loop``), over ``ws://`` and
``wss://`` (TLS decrypts into the same bounded reads).
"""

from __future__ import annotations

import contextlib
import signal
import ssl
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from test_fault_process import Run, daemon, exit_code, wait_for
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from peers import OP_BINARY, RawServer, RawSession, deflate_bomb, events, frame, ws_server

pytestmark = pytest.mark.anyio

MiB = 2**20
FRAMES = 2_000
BODY = "x" * 900_000
FRAME = f'"{BODY}"'  # one JSON string: decoded, the body is a 900 KB str
QUEUE_BYTES = 32 * MiB
MEMORY_BUDGET = 64 * MiB
SLACK = 32 * MiB
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
event_loop = "{{loop}}"

[connections.up]
url = "{{url}}"
codec = "json"
compression = "deflate"
max_frame_size = "1MiB"
close_timeout = "500ms"
reconnect = {{{{ initial = "50ms", max = "200ms" }}}}
{{tls}}

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


@dataclass
class Wire:
    """The daemon's event loop and the upstream's scheme."""

    loop: str
    secure: bool
    server_tls: ssl.SSLContext | None = None
    tls: str = ""  # the connection's tls table, trusting the test CA


@pytest.fixture(
    params=[("asyncio", False), ("asyncio", True), ("uvloop", False), ("uvloop", True)],
    ids=["asyncio-ws", "asyncio-wss", "uvloop-ws", "uvloop-wss"],
)
def wire(request: pytest.FixtureRequest, tmp_path: Path) -> Wire:
    loop, secure = request.param
    made = Wire(loop, secure)
    if secure:
        import trustme

        ca = trustme.CA()
        made.server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(made.server_tls)
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        made.tls = f'tls = {{ ca_file = "{ca_file}" }}'
    return made


def write_config(run: Run, url: str, wire: Wire) -> None:
    plugins = run.root / "plugins"
    plugins.mkdir()
    (plugins / "sleepy.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    plugins.chmod(0o700)
    text = CONFIG.format(plugins=plugins, url=url, loop=wire.loop, tls=wire.tls)
    run.config.write_text(text, encoding="utf-8")


async def test_a_compression_flood_stays_within_the_memory_bounds(
    tmp_path: Path, wire: Wire
) -> None:
    run = Run(tmp_path)
    flood = Flood()
    # websockets' server: permessage-deflate is on by default, with context takeover.
    async with ws_server(flood.handler, max_size=2 * MiB, ssl=wire.server_tls) as url:
        write_config(run, url, wire)
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


async def test_a_deflate_bomb_is_refused_within_the_memory_bounds(
    tmp_path: Path, wire: Wire
) -> None:
    """Every connection gets one compressed frame that inflates to 256 MiB of zeros:
    websockets refuses it (1009) past max_frame_size, the reader delivers nothing of
    it, and memory stays within the budget plus the slack, connection after connection."""
    run = Run(tmp_path)
    bomb = frame(OP_BINARY, deflate_bomb(256 * MiB), rsv1=True)

    async def peer(session: RawSession) -> None:
        assert session.deflate
        await session.send(bomb)
        await session.wait_eof()

    server = RawServer(peer, deflate=True, ssl=wire.server_tls)
    async with server.serve() as url:
        write_config(run, url, wire)
        async with daemon(run) as proc:
            await wait_for(lambda: server.connections >= 1, 10, "the daemon to connect")
            before, _ = memory(proc.pid)
            peak = before
            with anyio.fail_after(20):
                while server.connections < 4:
                    rss, hwm = memory(proc.pid)
                    peak = max(peak, rss, hwm)
                    await anyio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            code = await exit_code(proc, 15)
    log = run.log()
    assert code == 0, run.stderr.read_text()[-3000:]
    lost = events(log, "connection_lost")
    assert len(lost) >= 3
    assert {e["code"] for e in lost} == {1009}
    assert not events(log, "frame_undecodable")
    totals = {e["handler"]: e for e in events(log, "delivery_totals")}
    assert totals["blocking"]["received"] == 0  # nothing of the bomb was delivered
    limit = before + MEMORY_BUDGET + SLACK
    assert peak < limit, f"peak RSS {peak / MiB:.1f} MiB >= {limit / MiB:.1f} MiB"
