"""The reader gives way to the handlers when a queue overflows (fairness under a flood).

A ``drop-oldest``/``drop-newest`` queue that drops a message means its handler
is behind: the dispatcher then hands the reader one yield (an awaitable), so
the handler's worker runs before the rest of the socket read is routed.
Real runners on the event loop; nothing here measures time.
"""

from __future__ import annotations

import anyio
import pytest

from wsroute import Message
from wsroute.config import HandlerSection
from wsroute.dispatch import Dispatcher
from wsroute.handler import HandlerRunner, MemoryBudget
from wsroute.router import Router
from wsroute.testing import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Gated:
    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.seen: list[int] = []

    async def handle(self, message: Message) -> None:
        self.seen.append(message.seq)
        await self.gate.wait()


def msg(seq: int) -> Message:
    return Message("c", "k", {}, raw=b"x" * 10, seq=seq)


@pytest.mark.parametrize("policy", ["drop-oldest", "drop-newest"])
async def test_a_drop_hands_the_reader_one_yield_and_nothing_else_does(policy: str) -> None:
    handler = Gated()
    budget = MemoryBudget()
    runner = HandlerRunner(
        "slow", HandlerSection(plugin="test", queue=2, overflow=policy), handler, budget=budget
    )
    dispatcher = Dispatcher(Router.compile([("r", None, None, [runner])]), budget=budget)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        assert dispatcher.dispatch(msg(1)) is None
        await wait_until(lambda: handler.seen == [1])  # in flight, held at the gate
        assert dispatcher.dispatch(msg(2)) is None
        assert dispatcher.dispatch(msg(3)) is None  # the queue is full now, nothing dropped
        give_way = dispatcher.dispatch(msg(4))  # a drop
        assert give_way is not None
        assert not budget.overflowed  # taken by the dispatcher: one yield per drop
        await give_way
        assert runner.stats.dropped == 1
        handler.gate.set()
        await wait_until(runner.idle)
        assert dispatcher.dispatch(msg(5)) is None  # room again: no yield
        await wait_until(runner.idle)
        await runner.stop_workers("shutdown")
    kept = [2, 3] if policy == "drop-newest" else [3, 4]
    assert handler.seen == [1, *kept, 5]
    assert runner.balanced()
