"""The ``moving_average`` handler: a running mean per route key, emitted or logged.

It shows the parts of the plugin API a handler usually needs: typed options
with documentation, validation in ``__post_init__`` (a bad value fails
``wsroute check`` with the key's path), the bound logger, and ``ctx.emit`` to
route a derived message through the config's routes again.
"""

from __future__ import annotations

import statistics
from collections import defaultdict, deque
from dataclasses import dataclass, field

from wsroute import HandlerContext, Key, Message

__all__ = ["MovingAverage"]


class MovingAverage:
    """Average a numeric body field over the last N messages of each route key.

    Every ``every`` messages of a key, the average goes out as a derived
    message with the route key ``emit_key`` (route it like any other), or, with
    no ``emit_key``, as a log line. Messages without the field are skipped.
    """

    @dataclass
    class Options:
        value: str = field(
            default="price", metadata={"doc": "The body field to average (a number)."}
        )
        window: int = field(default=20, metadata={"doc": "How many recent values count."})
        every: int = field(default=1, metadata={"doc": "Report after this many messages."})
        emit_key: str | None = field(
            default="average",
            metadata={"doc": "Route key of the emitted average; unset: log it instead."},
        )

        def __post_init__(self) -> None:
            if self.window < 1:
                raise ValueError(f"window must be at least 1, got {self.window}")
            if self.every < 1:
                raise ValueError(f"every must be at least 1, got {self.every}")

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self._ctx = ctx
        self._windows: dict[Key, deque[float]] = defaultdict(lambda: deque(maxlen=options.window))
        self._counts: dict[Key, int] = defaultdict(int)

    async def handle(self, message: Message) -> None:
        """Add the message's value to its key's window; report every ``every`` messages."""
        options = self.options
        if options.emit_key is not None and message.key == options.emit_key:
            return  # our own output, routed back to us: not a sample
        body = message.body
        value = body.get(options.value) if isinstance(body, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._ctx.log.debug("moving_average_skipped", key=message.key, seq=message.seq)
            return
        window = self._windows[message.key]
        window.append(float(value))
        self._counts[message.key] += 1
        if self._counts[message.key] % options.every:
            return
        average = statistics.fmean(window)
        if options.emit_key is None:
            self._ctx.log.info(
                "moving_average", key=message.key, average=average, samples=len(window)
            )
            return
        await self._ctx.emit(
            Message(
                message.connection,
                options.emit_key,
                {"of": message.key, "average": average, "samples": len(window)},
                seq=message.seq,
                received_at=message.received_at,
            )
        )
