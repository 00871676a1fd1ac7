"""Signals to the real daemon in the middle of a burst: SIGTERM drains, SIGHUP keeps going.

The daemon runs as ``wsroute run -c FILE`` in a subprocess, logging JSON to a
file; the upstream is a websockets server in the test process writing 50,000
small binary frames as fast as it can, each carrying its number. A slow
handler (a plugin module on ``plugin_paths``) writes the seq of each message
it handled to a file; the dead letters go to a jsonl file. From the files and
the daemon's own totals the test checks that every frame the daemon read is,
for each handler, either handled or dead-lettered — never both, never neither.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from wsroute.records import parse_record

from peers import events, read_json_log, ws_server

pytestmark = pytest.mark.anyio

FRAMES = 50_000

SLOW_PLUGIN = '''
"""A slow handler for the fault suite: records each handled seq in a file."""

import os
from dataclasses import dataclass

import anyio

from wsroute import Duration, HandlerContext, Message


class SlowSink:
    @dataclass
    class Options:
        out: str
        delay: Duration = Duration(0.001)

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self.fd = -1

    async def start(self) -> None:
        self.fd = os.open(self.options.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    async def handle(self, message: Message) -> None:
        await anyio.sleep(self.options.delay)
        os.write(self.fd, b"%d\\n" % message.seq)  # unbuffered: handled means on disk

    async def stop(self) -> None:
        os.close(self.fd)
'''

CONFIG = """
[daemon]
log_level = "info"
log_format = "json"
shutdown_timeout = "1s"
dead_letter = "dlq"
plugin_paths = ["{plugins}"]

[connections.up]
url = "{url}"
codec = "exchange"
close_timeout = "500ms"

[codecs.exchange]
type = "struct"
header = "<i"
fields = ["opcode"]

[routes.data]
key = 1
handlers = ["archive", "slow"]

[handlers.archive]
plugin = "jsonl"
path = "{archive}"

[handlers.slow]
plugin = "slowsink:SlowSink"
out = "{handled}"
delay = "1ms"
queue = 5000

[handlers.dlq]
plugin = "jsonl"
path = "{dlq}"
"""


@dataclass
class Burst:
    """Writes ``FRAMES`` binary frames ``<i opcode=1> + {"n": N}``; counts what it wrote."""

    sent: int = 0
    connections: int = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        head = struct.pack("<i", 1)
        with contextlib.suppress(ConnectionClosed):
            while self.sent < FRAMES:
                number = self.sent + 1
                await ws.send(head + b'{"n":%d}' % number)
                self.sent = number
            await ws.wait_closed()


@dataclass
class Run:
    """Paths of one daemon run."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "wsroute.toml"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr.log"

    @property
    def handled(self) -> Path:
        return self.root / "slow-handled.txt"

    @property
    def archive(self) -> Path:
        return self.root / "archive.jsonl"

    @property
    def dlq(self) -> Path:
        return self.root / "dead.jsonl"

    def write_config(self, url: str) -> None:
        plugins = self.root / "plugins"
        plugins.mkdir()
        (plugins / "slowsink.py").write_text(textwrap.dedent(SLOW_PLUGIN), encoding="utf-8")
        plugins.chmod(0o700)  # plugin_paths folders must not be writable by others
        self.config.write_text(
            CONFIG.format(
                plugins=plugins,
                url=url,
                archive=self.archive,
                handled=self.handled,
                dlq=self.dlq,
            ),
            encoding="utf-8",
        )

    def handled_seqs(self) -> list[int]:
        if not self.handled.exists():
            return []
        return [int(line) for line in self.handled.read_text().split()]

    def log(self) -> list[dict[str, Any]]:
        return read_json_log(self.stderr)


def wsroute_command(config: Path) -> list[str]:
    """The installed console script next to this interpreter, or ``python -m wsroute.cli``."""
    script = Path(sys.executable).with_name("wsroute")
    if script.exists():
        return [str(script), "run", "-c", str(config)]
    return [sys.executable, "-m", "wsroute.cli", "run", "-c", str(config)]


@contextlib.asynccontextmanager
async def daemon(run: Run) -> AsyncIterator[Process]:
    """Start ``wsroute run``; kill it if the test leaves it running."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
    }
    with run.stderr.open("wb") as err:
        proc = await anyio.open_process(
            wsroute_command(run.config),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            with anyio.move_on_after(5):
                await proc.wait()


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def exit_code(proc: Process, timeout: float) -> int:
    with anyio.fail_after(timeout):
        return await proc.wait()


def records(path: Path) -> Iterator[Any]:
    if path.exists():
        for line in path.read_bytes().splitlines():
            yield parse_record(line)


def check_nothing_lost(
    run: Run,
    burst: Burst,
    reasons: frozenset[str] = frozenset({"shutdown"}),
    slow_swapped: bool = False,
) -> dict[str, Any]:
    """The delivery promise, from the files and the daemon's shutdown totals.

    ``slow_swapped``: a reload replaced the slow handler's runner, so its shutdown
    totals cover only the new runner; the files still cover both.
    """
    log = run.log()
    assert not events(log, "delivery_unbalanced"), events(log, "delivery_unbalanced")
    assert not events(log, "message_lost")
    assert events(log, "shutdown_complete")
    frames = events(log, "connection_totals")[0]["frames"]
    assert 0 < frames <= burst.sent
    every = set(range(1, frames + 1))
    totals = {e["handler"]: e for e in events(log, "delivery_totals")}

    dead = list(records(run.dlq))
    assert {r.dead_letter.reason for r in dead if r.dead_letter} <= reasons
    dead_by: dict[str, list[int]] = {"slow": [], "archive": []}
    for r in dead:
        assert r.dead_letter is not None
        assert r.body == {"n": r.seq}  # the message itself, not a stub
        dead_by[str(r.dead_letter.handler)].append(r.seq)

    handled = run.handled_seqs()
    assert len(handled) == len(set(handled))  # nothing handled twice
    assert set(handled).isdisjoint(dead_by["slow"])  # nothing both handled and dead-lettered
    assert set(handled) | set(dead_by["slow"]) == every  # gap-free 1..frames: nothing else

    archived = [r.seq for r in records(run.archive)]
    assert all(r.body == {"n": r.seq} for r in records(run.archive))
    assert len(archived) == len(set(archived))
    assert set(archived) | set(dead_by["archive"]) == every

    slow = totals["slow"]
    assert slow["in_flight"] == 0
    if not slow_swapped:
        assert slow["received"] == frames
        assert slow["handled"] == len(handled)
        assert slow["dead_lettered"] == len(dead_by["slow"])
    assert totals["archive"]["received"] == frames
    assert totals["dlq"]["handled"] == len(dead)
    return {"frames": frames, "handled": len(handled), "dead": dead_by, "log": log}


async def test_sigterm_mid_burst_drains_and_dead_letters_the_rest(tmp_path: Path) -> None:
    run = Run(tmp_path)
    burst = Burst()
    async with ws_server(burst.handler) as url:
        run.write_config(url)
        async with daemon(run) as proc:
            await wait_for(lambda: len(run.handled_seqs()) >= 300, 20, "the slow handler")
            proc.send_signal(signal.SIGTERM)
            code = await exit_code(proc, 20)
    assert code == 0, run.stderr.read_text()[-3000:]
    result = check_nothing_lost(run, burst)
    # mid-burst: the slow handler's full queue held the reader back, SIGTERM stopped it
    assert result["frames"] < FRAMES
    # the shutdown really cut into the slow handler's backlog
    assert result["dead"]["slow"]
    assert result["handled"] > 0
    log = result["log"]
    assert events(log, "signal_received")[0]["signal"] == "SIGTERM"
    assert events(log, "handler_leftovers")
    print(
        f"\nSIGTERM: server wrote {burst.sent}, daemon read {result['frames']}, slow handled "
        f"{result['handled']}, dead-lettered at shutdown {len(result['dead']['slow'])}"
    )


@pytest.mark.parametrize("change", ["unchanged", "slow-handler-changed"])
async def test_sighup_mid_burst_keeps_the_connection_and_loses_nothing(
    tmp_path: Path, change: str
) -> None:
    """SIGHUP with the same file, or with the slow handler's options changed.

    Either way the connection stays up and every frame read is handled or
    dead-lettered by each handler. A changed handler is replaced: the old runner
    drains, and what it could not finish is dead-lettered (reason ``removed``).
    """
    run = Run(tmp_path)
    burst = Burst()
    async with ws_server(burst.handler) as url:
        run.write_config(url)
        async with daemon(run) as proc:
            await wait_for(lambda: len(run.handled_seqs()) >= 300, 20, "the slow handler")
            if change != "unchanged":
                text = run.config.read_text().replace('delay = "1ms"', 'delay = "2ms"')
                run.config.write_text(text)
            proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: events(run.log(), "reload_started"), 10, "reload_started")
            at_reload = len(run.handled_seqs())
            # still delivering after the reload
            await wait_for(
                lambda: len(run.handled_seqs()) >= at_reload + 300, 20, "delivery after SIGHUP"
            )
            assert proc.returncode is None
            proc.send_signal(signal.SIGTERM)
            code = await exit_code(proc, 20)
    assert code == 0, run.stderr.read_text()[-3000:]
    assert burst.connections == 1  # an unchanged connection is not dropped by a reload
    result = check_nothing_lost(
        run,
        burst,
        reasons=frozenset({"shutdown", "removed"}),
        slow_swapped=change != "unchanged",
    )
    log = result["log"]
    assert not events(log, "reload_failed")
    assert not events(log, "connection_lost")
    assert events(log, "connection_totals")[0]["reconnects"] == 0
    reasons = sorted({str(r.dead_letter.reason) for r in records(run.dlq) if r.dead_letter})
    print(
        f"\nSIGHUP ({change}): server wrote {burst.sent}, daemon read {result['frames']}, "
        f"slow handled {result['handled']}, dead letters {reasons}; reload events: "
        + json.dumps([e["event"] for e in log if e["event"].startswith("reload")])
    )
