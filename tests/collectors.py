"""Handler plugins for the tests, loaded by the daemon as ``collectors:Collect``.

Each instance records what it handled in ``Collect.seen[handler name]`` so a
test can look at deliveries of a daemon running in-process.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import anyio

from wsroute import Duration, Frame, HandlerContext, Message, SourceContext, SourceLimits


class Collect:
    """Record every message; optionally fail, hang or go slowly."""

    seen: dict[str, list[Message]] = defaultdict(list)
    attempts: dict[str, int] = defaultdict(int)
    events: list[tuple[str, str]] = []  # (handler name, "start" | "stop"), in order

    @dataclass
    class Options:
        fail_first: int = 0  # raise on this many attempts in total, then succeed
        fail_always: bool = False
        fail_start: bool = False  # start() raises: the handler cannot start
        hang: bool = False
        delay: Duration = Duration(0.0)
        reply_json: str = ""  # send {"echo": <key>} upstream on this connection name

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self.ctx = ctx

    async def start(self) -> None:
        Collect.events.append((self.ctx.name, "start"))
        if self.options.fail_start:
            raise OSError(f"{self.ctx.name} cannot start on purpose")

    async def stop(self) -> None:
        Collect.events.append((self.ctx.name, "stop"))

    async def handle(self, message: Message) -> None:
        name = self.ctx.name
        Collect.attempts[name] += 1
        if self.options.hang:
            await anyio.sleep_forever()
        if self.options.delay:
            await anyio.sleep(self.options.delay)
        if self.options.fail_always or Collect.attempts[name] <= self.options.fail_first:
            raise RuntimeError(f"{name} fails on purpose")
        if self.options.reply_json:
            await self.ctx.send(self.options.reply_json, json={"echo": message.key})
        Collect.seen[name].append(message)

    @classmethod
    def reset(cls) -> None:
        cls.seen.clear()
        cls.attempts.clear()
        cls.events.clear()


class SyncCollect:
    """A blocking, synchronous handler: the daemon runs it in a worker thread."""

    seen: dict[str, list[Message]] = defaultdict(list)

    @dataclass
    class Options:
        sleep: Duration = Duration(0.0)

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self.ctx = ctx

    def handle(self, message: Message) -> None:
        time.sleep(self.options.sleep)  # blocks: must not block the event loop
        SyncCollect.seen[self.ctx.name].append(message)


class ListSource:
    """A source that delivers ``count`` JSON frames, then idles; records what was acked."""

    acked: dict[str, list[int]] = defaultdict(list)
    delivered: dict[str, int] = defaultdict(int)

    @dataclass
    class Options:
        count: int = 10
        poison_every: int = 0  # every Nth entry goes straight to the dead letters
        redelivery_after: Duration = Duration(0.0)
        max_deliveries: int = 0

    @classmethod
    def limits(cls, options: ListSource.Options) -> SourceLimits:
        return SourceLimits(
            redelivery_after=options.redelivery_after or None,
            needs_dead_letter=options.max_deliveries > 0,
        )

    def __init__(self, options: Options, ctx: SourceContext) -> None:
        self.options = options
        self.ctx = ctx

    async def run(self) -> None:
        name = self.ctx.name
        for n in range(1, self.options.count + 1):
            message = self.ctx.decode(Frame(name, f'{{"type": "tick", "n": {n}}}', n, time.time()))

            def settled(n: int = n) -> None:
                ListSource.acked[name].append(n)

            if self.options.poison_every and n % self.options.poison_every == 0:
                await self.ctx.dead_letter(message, "max_deliveries", error="5", on_settled=settled)
            else:
                await self.ctx.deliver(message, settled)
            ListSource.delivered[name] += 1
        await anyio.sleep_forever()

    async def close(self) -> None:
        ListSource.acked[self.ctx.name].append(-1)  # marks that close() ran after the drain

    @classmethod
    def reset(cls) -> None:
        cls.acked.clear()
        cls.delivered.clear()
