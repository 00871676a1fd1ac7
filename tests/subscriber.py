"""A handler that keeps a runtime subscription (ctx.subscribe), for the tests."""

from __future__ import annotations

from wsroute import HandlerContext, Message


class Subscriber:
    """Subscribe to "ticks" on the connection of the first message seen."""

    def __init__(self, options: None, ctx: HandlerContext) -> None:
        self.ctx = ctx
        self.done = False

    async def handle(self, message: Message) -> None:
        if not self.done:
            self.done = True
            await self.ctx.subscribe(message.connection, "ticks", json={"subscribe": "ticks"})
