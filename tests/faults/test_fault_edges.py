"""Promises at the edges, tried the way a hostile upstream or an impatient operator would.

- keys beginning with ``$`` belong to the daemon: an upstream frame that decodes
  to ``"$connected"`` never passes for the real lifecycle message; it is
  counted, logged and handled as unmatched;
- close codes 1012/1013 slow the next attempt down even during ``on_connect``;
- signals during shutdown: a SIGHUP after SIGTERM reopens nothing, and a stop
  does not wait behind a queue of reloads;
- the dead-letter handler gets the time it needs within ``shutdown_timeout``:
  a clean SIGTERM leaves every unhandled message in the dead-letter file.

The daemon runs in-process where the test needs to see inside it, and as a
real ``wsroute run`` subprocess with real signals otherwise.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs
from test_fault_process import Burst, Run, check_nothing_lost, daemon, exit_code, wait_for
from websockets.asyncio.server import ServerConnection

from wsroute.testing import wait_until

from collectors import Collect
from conftest import running
from peers import events, ws_server

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _reset() -> None:
    Collect.reset()


# --------------------------------------------------------------------------- "$" keys

SPOOFS = [
    {"type": "$connected", "outage": None, "connects": 1},
    {"type": "$disconnected", "code": 1000},
    {"type": "$admin", "grant": "all"},
]

SPOOF_CONFIG = """
[daemon]
unmatched = "odd"

[connections.up]
url = "{url}"
codec = "json"

[routes.life]
key = ["$connected", "$disconnected"]
handlers = ["life"]

[routes.ticks]
key = "tick"
handlers = ["ticks"]

[handlers.life]
plugin = "collectors:Collect"

[handlers.ticks]
plugin = "collectors:Collect"

[handlers.odd]
plugin = "collectors:Collect"
"""


async def test_an_upstream_cannot_spoof_lifecycle_messages() -> None:
    async def spoofer(ws: ServerConnection) -> None:
        for body in SPOOFS:
            await ws.send(json.dumps(body))
        await ws.send(json.dumps({"type": "tick", "n": 1}))
        await ws.wait_closed()

    async with ws_server(spoofer) as url:
        with capture_logs() as logs:
            async with running(SPOOF_CONFIG.format(url=url)) as service:
                await wait_until(lambda: len(Collect.seen["ticks"]) == 1)
                await wait_until(lambda: len(Collect.seen["odd"]) == len(SPOOFS))
                assert service.dispatcher.unmatched["up"] == len(SPOOFS)
    # The lifecycle route saw the daemon's own messages only: no raw frame behind them.
    life = Collect.seen["life"]
    assert [m.key for m in life] == ["$connected", "$disconnected"]
    assert all(m.raw == "" for m in life)
    assert life[0].body["connects"] == 1
    assert "outage" in life[0].body
    # Each spoofed frame was handled as unmatched, with its raw frame.
    assert [json.loads(m.raw) for m in Collect.seen["odd"]] == SPOOFS
    unmatched = events(logs, "message_unmatched")
    assert not unmatched  # an unmatched handler takes them: nothing to log per message


async def test_a_dollar_key_without_an_unmatched_handler_is_counted_and_logged() -> None:
    async def spoofer(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "$connected"}))
        await ws.wait_closed()

    config = SPOOF_CONFIG.replace('unmatched = "odd"', "").replace(
        '[handlers.odd]\nplugin = "collectors:Collect"\n', ""
    )
    async with ws_server(spoofer) as url:
        with capture_logs() as logs:
            async with running(config.format(url=url)) as service:
                await wait_until(lambda: service.dispatcher.unmatched["up"] == 1)
                await wait_until(lambda: len(Collect.seen["life"]) == 1)  # the real one
    (logged,) = events(logs, "message_unmatched")
    assert logged["log_level"] == "info"
    assert logged["key"] == "$connected"
    assert logged["reserved"] is True
    assert logged["unmatched_total"] == 1
    assert [m.key for m in Collect.seen["life"]] == ["$connected", "$disconnected"]


# --------------------------------------------------------------------------- 1012 / 1013

SLOW_DOWN_CONFIG = """
[connections.up]
url = "{url}"
codec = "json"
reconnect = {{ initial = "50ms", max = "30s", jitter = 0.0 }}

[[connections.up.on_connect]]
json = {{ op = "login" }}
[[connections.up.on_connect]]
expect = {{ key = "welcome", timeout = "5s" }}

[routes.all]
handlers = ["sink"]

[handlers.sink]
plugin = "collectors:Collect"
"""


@pytest.mark.parametrize("code", [1012, 1013])
async def test_a_close_asking_to_slow_down_during_on_connect_waits(code: int) -> None:
    """A server restarting (1012) or overloaded (1013) says so while we log in:
    the next attempt waits at least 5 s, not the short first backoff."""

    async def restarting(ws: ServerConnection) -> None:
        await ws.recv()  # the login; no welcome, the server goes away
        await ws.close(code, "restarting")

    async with ws_server(restarting) as url:
        with capture_logs() as logs:
            async with running(SLOW_DOWN_CONFIG.format(url=url)):
                await wait_until(lambda: events(logs, "reconnect_scheduled"), timeout=10)
    (lost,) = events(logs, "connection_lost")
    assert lost["code"] == code
    assert events(logs, "reconnect_scheduled")[0]["delay"] >= 5.0


# --------------------------------------------------------------------------- signals


async def test_a_sighup_during_the_shutdown_drain_reopens_nothing(tmp_path: Path) -> None:
    run = Run(tmp_path)
    burst = Burst()
    async with ws_server(burst.handler) as url:
        run.write_config(url)
        async with daemon(run) as proc:
            await wait_for(lambda: len(run.handled_seqs()) >= 300, 20, "the slow handler")
            # The connection changed: a reload now would restart it after "stop reading".
            text = run.config.read_text().replace('close_timeout = "500ms"', 'close_timeout = "1s"')
            run.config.write_text(text)
            proc.send_signal(signal.SIGTERM)
            await wait_for(lambda: events(run.log(), "shutdown_started"), 10, "shutdown_started")
            for _ in range(3):
                proc.send_signal(signal.SIGHUP)
            code = await exit_code(proc, 30)
    assert code == 0, run.stderr.read_text()[-3000:]
    assert burst.connections == 1  # never reopened
    result = check_nothing_lost(run, burst)  # in_flight 0: handled or dead-lettered
    log = result["log"]
    assert not events(log, "reload_started")
    assert events(log, "reload_ignored")
    assert len(events(log, "connected")) == 1


async def test_a_stop_does_not_wait_behind_queued_reloads(tmp_path: Path) -> None:
    run = Run(tmp_path)
    burst = Burst()
    async with ws_server(burst.handler) as url:
        run.write_config(url)
        async with daemon(run) as proc:
            await wait_for(lambda: len(run.handled_seqs()) >= 300, 20, "the slow handler")
            # Each reload replaces the slow handler, which drains for up to 1 s.
            text = run.config.read_text().replace('delay = "1ms"', 'delay = "2ms"')
            run.config.write_text(text)
            for _ in range(10):
                proc.send_signal(signal.SIGHUP)
                await anyio.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            code = await exit_code(proc, 30)
    assert code == 0, run.stderr.read_text()[-3000:]
    result = check_nothing_lost(
        run, burst, reasons=frozenset({"shutdown", "removed"}), slow_swapped=True
    )
    # Ten SIGHUPs are coalesced: at most the running reload and one more, and the
    # one still pending when SIGTERM came is dropped.
    assert len(events(result["log"], "reload_started")) <= 2


DLQ_SLOW = """
[handlers.dlq]
plugin = "slowsink:SlowSink"
out = "{out}"
delay = "1ms"
"""

DLQ_FSYNC = """
[handlers.dlq]
plugin = "jsonl"
path = "{out}"
fsync = true
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["slow", "fsync"])
async def test_a_clean_stop_leaves_every_unhandled_message_with_the_dead_letter_handler(
    tmp_path: Path, kind: str
) -> None:
    """3,000 messages queued for a slow handler at SIGTERM: the handlers drain
    for half of ``shutdown_timeout``, then the dead-letter handler gets the
    rest — more than the time it needs for all of them (a 1 ms-per-message
    handler needs over 3 s; it used to get a fixed 2 s)."""
    run = Run(tmp_path)
    burst = Burst()
    out = tmp_path / ("dead-seqs.txt" if kind == "slow" else "dead-fsync.jsonl")
    async with ws_server(burst.handler) as url:
        run.write_config(url)
        text = run.config.read_text()
        text = text.replace('shutdown_timeout = "1s"', 'shutdown_timeout = "10s"')
        text = text.replace('delay = "1ms"\nqueue = 5000', 'delay = "100ms"\nqueue = 3000')
        dlq = (DLQ_SLOW if kind == "slow" else DLQ_FSYNC).format(out=out)
        head, _, _ = text.partition("[handlers.dlq]")
        run.config.write_text(head + dlq)
        async with daemon(run) as proc:
            await wait_for(lambda: len(run.handled_seqs()) >= 5, 20, "the slow handler")
            await anyio.sleep(0.5)  # its queue is full by now
            proc.send_signal(signal.SIGTERM)
            code = await exit_code(proc, 40)
    assert code == 0, run.stderr.read_text()[-3000:]
    log = run.log()
    assert not events(log, "message_lost")
    assert not events(log, "delivery_unbalanced")
    totals = {e["handler"]: e for e in events(log, "delivery_totals")}
    dead = totals["slow"]["dead_lettered"] + totals["archive"]["dead_lettered"]
    assert dead >= 2_500  # the slow handler's backlog, dead-lettered at the midpoint
    assert totals["dlq"]["handled"] == totals["dlq"]["received"] == dead
    assert totals["dlq"]["lost"] == 0
    lines = out.read_bytes().count(b"\n")
    assert lines == dead  # every one of them is in the file
