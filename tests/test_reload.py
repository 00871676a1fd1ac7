"""Reload (SIGHUP): validate the new file; keep the old config if invalid, apply a diff if valid."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from wsroute.config import load
from wsroute.demo import ReferenceUpstream
from wsroute.service import Service, plan

from collectors import Collect
from conftest import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _reset() -> None:
    Collect.reset()


BASE = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "2s"

[connections.a]
url = "{a}"
codec = "exchange"
[[connections.a.on_connect]]
json = {{ role = "admin", user_id = "a" }}
[[connections.a.on_connect]]
struct = {{ format = "<i", values = [2] }}
json = ["first"]

[connections.b]
url = "{b}"
codec = "exchange"
{b_extra}
[[connections.b.on_connect]]
json = {{ role = "admin", user_id = "b" }}
[[connections.b.on_connect]]
struct = {{ format = "<i", values = [2] }}
json = ["first"]

[codecs.exchange]
type = "struct"
header = "<i"
fields = ["opcode"]

[routes.ticks]
key = 1
handlers = [{ticks_handlers}]

[handlers.first]
plugin = "collectors:Collect"
{second}
[handlers.dlq]
plugin = "collectors:Collect"
"""


SECOND = '[handlers.second]\nplugin = "collectors:Collect"\n'


def write(
    path: Path, a: str, b: str, *, ticks: str = '"first"', b_extra: str = "", second: str = ""
) -> None:
    text = BASE.format(a=a, b=b, ticks_handlers=ticks, b_extra=b_extra, second=second)
    path.write_text(text)


@contextlib.asynccontextmanager
async def daemon(path: Path) -> AsyncIterator[Service]:
    service = Service(plan(load(path)), reload=lambda: plan(load(path)))
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        try:
            yield service
        finally:
            service.shutdown()


@contextlib.asynccontextmanager
async def two_upstreams() -> AsyncIterator[tuple[ReferenceUpstream, ReferenceUpstream]]:
    up_a, up_b = ReferenceUpstream(tick_interval=0.005), ReferenceUpstream(tick_interval=0.005)
    async with up_a.serve(), up_b.serve():
        yield up_a, up_b


async def test_invalid_file_keeps_the_old_config_running(tmp_path: Path) -> None:
    path = tmp_path / "wsroute.toml"
    async with two_upstreams() as (up_a, up_b):
        write(path, up_a.url, up_b.url)
        with capture_logs() as logs:
            async with daemon(path) as service:
                await wait_until(lambda: len(Collect.seen["first"]) >= 10)
                path.write_text(
                    path.read_text().replace('plugin = "collectors:Collect"', "plugin = 7", 1)
                )
                await service.reload()
                before = len(Collect.seen["first"])
                await wait_until(lambda: len(Collect.seen["first"]) >= before + 10)
        assert up_a.connections == 1
        assert up_b.connections == 1
    failed = [e for e in logs if e["event"] == "reload_invalid"]
    assert failed
    assert "handlers.first.plugin" in failed[0]["error"]
    assert any(e["event"] == "reload_failed" for e in logs)
    assert not any(e["event"] == "reload_applied" for e in logs)


async def test_valid_change_keeps_unchanged_sockets_and_applies_routes(tmp_path: Path) -> None:
    path = tmp_path / "wsroute.toml"
    async with two_upstreams() as (up_a, up_b):
        write(path, up_a.url, up_b.url)
        with capture_logs() as logs:
            async with daemon(path) as service:
                # both connected (first connects are spread out by up to 100 ms)
                await wait_until(lambda: up_a.connections == up_b.connections == 1)
                await wait_until(lambda: len(Collect.seen["first"]) >= 10)
                conn_a = service.connections["a"]
                seq_b = service.connections["b"].seq
                # a route now fans out to a new handler; connection b changes
                write(
                    path,
                    up_a.url,
                    up_b.url,
                    ticks='"first", "second"',
                    b_extra='idle_timeout = "30s"',
                    second=SECOND,
                )
                await service.reload()
                await wait_until(lambda: len(Collect.seen["second"]) >= 10)
                await wait_until(lambda: up_b.connections == 2)
                assert service.connections["a"] is conn_a  # the same socket, never closed
                assert service.connections["b"].seq >= seq_b  # seq goes on after a restart
        assert up_a.connections == 1
        assert up_b.connections == 2
    applied = next(e for e in logs if e["event"] == "reload_applied")
    assert applied["connections_kept"] == ["a"]
    assert applied["connections_restarted"] == ["b"]
    assert applied["handlers_started"] == ["second"]
    assert not any(e["event"] == "delivery_unbalanced" for e in logs)


@pytest.mark.parametrize("queue", [10_000, 2])  # 2: the readers wait for room in it
async def test_removed_handler_drains_or_dead_letters(tmp_path: Path, queue: int) -> None:
    path = tmp_path / "wsroute.toml"
    async with two_upstreams() as (up_a, up_b):
        slow = SECOND + f'delay = "1s"\ntimeout = "5s"\nqueue = {queue}\n'
        write(path, up_a.url, up_b.url, ticks='"first", "second"', second=slow)
        with capture_logs() as logs:
            async with daemon(path) as service:
                await wait_until(lambda: service.runners["second"].queued >= min(5, queue))
                await anyio.sleep(0.05)  # with queue = 2, both readers are blocked by now
                second = service.runners["second"]
                write(path, up_a.url, up_b.url, ticks='"first"')
                path.write_text(
                    path.read_text().replace(
                        'shutdown_timeout = "2s"', 'shutdown_timeout = "200ms"'
                    )
                )
                await service.reload()
                assert "second" not in service.runners
                assert second.balanced()
                assert second.stats.dead_lettered >= 1
    letters = [m.dead_letter for m in Collect.seen["dlq"] if m.dead_letter]
    reasons = [letter.reason for letter in letters if letter.handler == "second"]
    assert reasons == ["removed"] * second.stats.dead_lettered  # also what the readers held
    totals = [e for e in logs if e["event"] == "delivery_totals" and e["handler"] == "second"]
    assert totals[0]["dead_lettered"] == second.stats.dead_lettered  # logged at retirement
    assert not any(e["event"] == "delivery_unbalanced" for e in logs)


async def test_a_changed_event_loop_is_logged_as_needing_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "wsroute.toml"
    async with two_upstreams() as (up_a, up_b):
        write(path, up_a.url, up_b.url)
        with capture_logs() as logs:
            async with daemon(path) as service:
                # both connected (first connects are spread out by up to 100 ms)
                await wait_until(lambda: up_a.connections == up_b.connections == 1)
                await wait_until(lambda: len(Collect.seen["first"]) >= 5)
                path.write_text(
                    path.read_text().replace("[daemon]\n", '[daemon]\nevent_loop = "uvloop"\n')
                )
                await service.reload()
                before = len(Collect.seen["first"])
                await wait_until(lambda: len(Collect.seen["first"]) >= before + 5)
        assert up_a.connections == up_b.connections == 1  # the rest applied as usual
    (needs,) = [e for e in logs if e["event"] == "reload_needs_restart"]
    assert needs["key"] == "daemon.event_loop"
    assert (needs["running"], needs["configured"]) == ("asyncio", "uvloop")
