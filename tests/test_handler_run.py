"""A handler plugin's ``run(task_status=...)`` hook, as the daemon's HandlerRunner drives it."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest
from structlog.testing import capture_logs

from wsroute import Message, PluginError
from wsroute.config import HandlerSection
from wsroute.handler import HandlerRunner
from wsroute.testing import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Background:
    """Records the order of its lifecycle; ``fail`` makes run() raise (before or after started)."""

    def __init__(self, fail: str = "", crashes: int = 1) -> None:
        self.events: list[str] = []
        self.fail = fail
        self.crashes = crashes
        self.runs = 0
        self.seen: list[Message] = []

    async def start(self) -> None:
        self.events.append("start")

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.runs += 1
        self.events.append("run")
        if self.fail == "before" and self.runs <= self.crashes:
            raise OSError("cannot bind")
        task_status.started()
        if self.fail == "after" and self.runs <= self.crashes:
            raise RuntimeError("bug")
        try:
            await anyio.sleep_forever()
        finally:
            self.events.append("run cancelled")

    async def handle(self, message: Message) -> None:
        self.events.append("handle")
        self.seen.append(message)

    async def stop(self) -> None:
        self.events.append("stop")


def runner(plugin: Any) -> HandlerRunner:
    return HandlerRunner("bg", HandlerSection(plugin="test"), plugin)


async def test_run_starts_after_start_and_is_cancelled_before_stop() -> None:
    plugin = Background()
    handler = runner(plugin)
    async with anyio.create_task_group() as tg:
        await tg.start(handler.run)
        assert plugin.events == ["start", "run"]
        handler.offer(Message("c", 1, {}, seq=1))
        await wait_until(handler.idle)
        await handler.stop_workers("shutdown")
    assert plugin.events == ["start", "run", "handle", "run cancelled", "stop"]


async def test_a_run_failing_before_started_fails_the_start() -> None:
    plugin = Background(fail="before")
    with pytest.raises(PluginError, match=r"handlers\.bg: could not start: cannot bind"):
        await runner(plugin).run()  # as start() failing: raised before task_status.started()
    assert plugin.events == ["start", "run", "stop"]


async def test_a_run_crashing_later_is_logged_and_restarted() -> None:
    plugin = Background(fail="after")
    handler = runner(plugin)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(handler.run)
            await wait_until(lambda: plugin.runs == 2, timeout=5)
            handler.offer(Message("c", 1, {}, seq=1))
            await wait_until(handler.idle)
            await handler.stop_workers("shutdown")
    assert [e["error"] for e in logs if e["event"] == "handler_run_crashed"] == [
        "RuntimeError: bug"
    ]
    assert handler.stats.handled == 1
    assert plugin.events[-2:] == ["run cancelled", "stop"]
