"""The source boundary: acknowledgement only after every routed handler settled."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from wsroute.config import load, loads
from wsroute.exceptions import ConfigError
from wsroute.service import Service, plan
from wsroute.testing import wait_until

from collectors import Collect, ListSource
from conftest import running

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _reset() -> None:
    Collect.reset()
    ListSource.reset()


CONFIG = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "{shutdown}"

[sources.ticks]
type = "collectors:ListSource"
count = {count}
{extra}

[routes.ticks]
connection = "ticks"
handlers = [{handlers}]

[handlers.fast]
plugin = "collectors:Collect"
[handlers.slow]
plugin = "collectors:Collect"
delay = "{delay}"
[handlers.broken]
plugin = "collectors:Collect"
fail_always = true
retries = 1
[handlers.dlq]
plugin = "collectors:Collect"
"""


def config(
    *,
    count: int = 20,
    handlers: str = '"fast"',
    extra: str = "",
    delay: str = "0s",
    shutdown: str = "2s",
) -> str:
    return CONFIG.format(
        count=count, handlers=handlers, extra=extra, delay=delay, shutdown=shutdown
    )


async def test_messages_are_acknowledged_after_every_handler_settled() -> None:
    async with running(config(handlers='"fast", "broken"')) as service:
        await wait_until(lambda: len(ListSource.acked["ticks"]) == 20)
        assert len(Collect.seen["fast"]) == 20
        # broken failed twice per message, then dead-lettered: only then acknowledged
        assert len(Collect.seen["dlq"]) == 20
        assert service.runners["broken"].stats.dead_lettered == 20
    assert sorted(ListSource.acked["ticks"][:20]) == list(range(1, 21))
    assert Collect.seen["fast"][0].connection == "ticks"
    assert ListSource.acked["ticks"][-1] == -1  # close() ran


async def test_source_dead_letters_are_written_then_acknowledged() -> None:
    async with running(config(count=10, extra="poison_every = 5")):
        await wait_until(lambda: len(ListSource.acked["ticks"]) == 10)
    letters = Collect.seen["dlq"]
    assert [m.seq for m in letters] == [5, 10]
    assert {m.dead_letter.reason for m in letters} == {"max_deliveries"}  # type: ignore[union-attr]
    assert len(Collect.seen["fast"]) == 8


async def test_unfinished_messages_stay_unacknowledged_at_shutdown() -> None:
    async with running(
        config(count=30, handlers='"slow"', delay="100ms", shutdown="300ms")
    ) as service:
        await wait_until(lambda: ListSource.delivered["ticks"] == 30)
        slow = service.runners["slow"]
    handled = len(Collect.seen["slow"])
    stats = slow.stats
    assert 0 < handled < 30
    assert stats.released == 30 - handled
    assert stats.dead_lettered == 0  # not dead-lettered: the source redelivers them
    assert slow.balanced()
    acked = [n for n in ListSource.acked["ticks"] if n > 0]
    assert sorted(acked) == sorted(m.seq for m in Collect.seen["slow"])
    assert not Collect.seen["dlq"]


def test_check_requires_a_dead_letter_handler_for_max_deliveries() -> None:
    text = config(extra="max_deliveries = 5").replace('dead_letter = "dlq"\n', "")
    with pytest.raises(ConfigError) as error:
        plan(loads(text))
    assert "sources.ticks: max_deliveries needs a dead-letter handler" in str(error.value)


def test_check_warns_when_redelivery_could_hit_a_running_message() -> None:
    text = config(handlers='"slow"', extra='redelivery_after = "10s"')
    text = text.replace('delay = "0s"', 'delay = "0s"\ntimeout = "5s"\nretries = 3')
    result = plan(loads(text))
    warnings = [str(w) for w in result.config.warnings]
    assert any("sources.ticks.reclaim.min_idle" in w and '"slow"' in w for w in warnings)


def test_a_source_cannot_share_a_connection_name() -> None:
    text = config() + '\n[connections.ticks]\nurl = "ws://127.0.0.1:1/"\n'
    with pytest.raises(ConfigError) as error:
        loads(text)
    assert "sources.ticks: a source cannot have the name of a connection" in str(error.value)


async def test_reload_lets_a_changed_source_settle_before_closing(tmp_path: Path) -> None:
    path = tmp_path / "wsroute.toml"
    path.write_text(config(count=20, handlers='"slow"', delay="20ms"))
    service = Service(plan(load(path)), reload=lambda: plan(load(path)))
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        await wait_until(lambda: ListSource.delivered["ticks"] == 20)
        path.write_text(config(count=5, handlers='"slow"', delay="20ms"))
        await service.reload()
        closed_at = ListSource.acked["ticks"].index(-1)
        # everything the old source delivered was acknowledged before its close()
        assert sorted(ListSource.acked["ticks"][:closed_at]) == list(range(1, 21))
        service.shutdown()
