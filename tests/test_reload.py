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
from wsroute.testing import wait_until

from collectors import Collect

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


# --------------------------------------------------------------------------- all or nothing
# The promise: a reload applies completely or not at all. What the new config needs
# is built and started next to the running one; if any of it fails, what was started
# is stopped again and the old config keeps running untouched.

LIFE = """
[routes.life]
key = ["$connected", "$disconnected"]
handlers = ["life"]

[handlers.life]
plugin = "collectors:Collect"
"""


async def test_a_reload_whose_new_handler_cannot_start_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "wsroute.toml"
    async with two_upstreams() as (up_a, up_b):
        write(path, up_a.url, up_b.url)
        with capture_logs() as logs:
            async with daemon(path) as service:
                await wait_until(lambda: up_a.connections == up_b.connections == 1)
                await wait_until(lambda: len(Collect.seen["first"]) >= 5)
                runners, router = dict(service.runners), service.dispatcher.router
                conn_b = service.connections["b"]
                # "second" starts fine, "broken" cannot: neither may stay, and the
                # changed connection b must not be restarted.
                broken = SECOND + '[handlers.broken]\nplugin = "collectors:Collect"\n'
                broken += "fail_start = true\n"
                write(
                    path,
                    up_a.url,
                    up_b.url,
                    ticks='"first", "second", "broken"',
                    b_extra='idle_timeout = "30s"',
                    second=broken,
                )
                assert await service.reload() is False
                assert service.runners == runners
                assert service.dispatcher.router is router
                assert service.connections["b"] is conn_b
                assert "reload failed" in service.status_line()
                before = len(Collect.seen["first"])
                await wait_until(lambda: len(Collect.seen["first"]) >= before + 5)
                assert "second" not in Collect.seen
                # the one that did start was stopped again
                assert ("second", "stop") in Collect.events
                # a good reload afterwards applies, and the status says so
                write(path, up_a.url, up_b.url, ticks='"first", "second"', second=SECOND)
                assert await service.reload() is True
                assert "reload failed" not in service.status_line()
                await wait_until(lambda: len(Collect.seen["second"]) >= 5)
        assert up_b.connections == 1
    (invalid,) = [e for e in logs if e["event"] == "reload_invalid"]
    assert invalid["error"].startswith("handlers.broken: could not start:")
    assert "cannot start on purpose" in invalid["error"]
    assert [e["event"] for e in logs].count("reload_applied") == 1
    assert not any(e["event"] == "delivery_unbalanced" for e in logs)


async def test_a_reload_whose_changed_connection_has_no_tls_file_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wsroute.toml"
    async with two_upstreams() as (up_a, up_b):
        write(path, up_a.url, up_b.url)
        with capture_logs() as logs:
            async with daemon(path) as service:
                await wait_until(lambda: up_a.connections == up_b.connections == 1)
                conn_b = service.connections["b"]
                # load() does not look at files; starting the connection would fail.
                missing = tmp_path / "no-such-ca.pem"
                wss = up_b.url.replace("ws://", "wss://")
                write(path, up_a.url, wss, b_extra=f'tls = {{ ca_file = "{missing}" }}')
                assert await service.reload() is False
                assert service.connections["b"] is conn_b
                await anyio.sleep(0.2)
                assert conn_b.connected
        assert up_b.connections == 1
    (invalid,) = [e for e in logs if e["event"] == "reload_invalid"]
    assert invalid["error"].startswith("connections.b")
    assert "reload_applied" not in [e["event"] for e in logs]


async def test_a_reload_asked_for_while_stopping_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "wsroute.toml"
    async with two_upstreams() as (up_a, up_b):
        write(path, up_a.url, up_b.url)
        with capture_logs() as logs:
            async with daemon(path) as service:
                await wait_until(lambda: up_a.connections == up_b.connections == 1)
                write(path, up_a.url, up_b.url, b_extra='idle_timeout = "30s"')
                service.shutdown()
                service.request_reload()
                assert await service.reload() is False
        assert up_b.connections == 1  # never reopened after "stop reading"
    assert "reload_started" not in [e["event"] for e in logs]
    assert [e["event"] for e in logs].count("reload_ignored") == 2


async def test_every_connected_gets_its_disconnected_at_reload_and_shutdown(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wsroute.toml"
    async with two_upstreams() as (up_a, up_b):
        write(path, up_a.url, up_b.url, second=LIFE)
        with capture_logs() as logs:
            async with daemon(path) as service:
                await wait_until(lambda: len(Collect.seen["life"]) == 2)  # a and b up
                write(path, up_a.url, up_b.url, second=LIFE, b_extra='idle_timeout = "30s"')
                assert await service.reload() is True
                await wait_until(lambda: len(Collect.seen["life"]) == 4)
                assert service.connections["b"].stats.reconnects == 1
        assert up_b.connections == 2
    seen = [(m.connection, m.key) for m in Collect.seen["life"]]
    for name in ("a", "b"):
        keys = [key for connection, key in seen if connection == name]
        assert keys == ["$connected", "$disconnected"] * (len(keys) // 2), seen
    causes = [
        (m.connection, m.body["cause"]) for m in Collect.seen["life"] if m.key == "$disconnected"
    ]
    assert ("b", "reload") in causes
    assert ("a", "shutdown") in causes
    assert ("b", "shutdown") in causes
    b_connects = [
        m.body for m in Collect.seen["life"] if m.key == "$connected" and m.connection == "b"
    ]
    assert b_connects[1]["connects"] == 2
    assert b_connects[1]["outage"] is not None
    totals = {e["connection"]: e for e in logs if e["event"] == "connection_totals"}
    assert totals["b"]["reconnects"] == 1  # the restart by the reload counts


async def test_counters_stay_monotonic_when_a_reload_replaces_a_handler(tmp_path: Path) -> None:
    from wsroute.snapshot import handler_counts, status

    path = tmp_path / "wsroute.toml"
    async with two_upstreams() as (up_a, up_b):
        write(path, up_a.url, up_b.url)
        async with daemon(path) as service:
            await wait_until(lambda: handler_counts(service, "first")["handled"] >= 20)
            before = handler_counts(service, "first")
            # "first" changes: a new runner replaces it, starting from zero itself
            path.write_text(
                path.read_text().replace(
                    '[handlers.first]\nplugin = "collectors:Collect"\n',
                    '[handlers.first]\nplugin = "collectors:Collect"\nqueue = 5000\n',
                )
            )
            assert await service.reload() is True
            assert service.runners["first"].stats.received < before["received"]
            after = handler_counts(service, "first")
            for counter in ("received", "handled"):
                assert after[counter] >= before[counter], counter
            await wait_until(lambda: handler_counts(service, "first")["handled"] >= 40)
            snap = status(service)
            first = snap["handlers"]["first"]
            settled = first["handled"] + first["dead_lettered"] + first["dropped"]
            assert first["received"] == settled + first["released"] + first["in_flight"]
            assert snap["reloads"] == {"success": 1, "failure": 0}
            assert snap["connections"]["a"]["state"] == "connected"
