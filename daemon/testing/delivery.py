"""Messages delivered to a handler as the daemon delivers them, without a daemon.

:func:`deliver` puts a built handler behind the daemon's own delivery — its
queue, ``handle()`` or (with ``batch``) ``handle_batch()``, ``timeout``,
``retries`` with backoff, dead letters — so a test sees what a config with the
same delivery keys would do: which messages were handled, which were
dead-lettered and why, and the handler's counters. The plugin's lifecycle
(``start``, ``run``, ``stop``) stays the test's (see
:func:`~wsroute.testing.run_handler`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..plugin import Message
from .waiting import wait_until

__all__ = ["Delivery", "deliver"]


@dataclass
class Delivery:
    """What :func:`deliver` saw: the handler's counters and its dead letters, in order."""

    stats: dict[str, int]
    """``received``, ``handled``, ``dead_lettered``, ``failures``, ``retries``, ``timeouts``..."""
    dead_letters: list[Message] = field(default_factory=list)
    """The dead-lettered messages, each with its ``dead_letter`` reason, error and attempts."""

    @property
    def handled(self) -> int:
        """How many messages the handler handled."""
        return self.stats["handled"]


class _Calls:
    """Only the handler's ``handle``/``handle_batch``: the runner must not start or stop it."""

    def __init__(self, handler: Any) -> None:
        self.handle = handler.handle
        batch = getattr(handler, "handle_batch", None)
        if batch is not None:
            self.handle_batch = batch


class _Letters:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle(self, message: Message) -> None:
        self.messages.append(message)


async def deliver(
    handler: Any,
    messages: Sequence[Message],
    delivery: Mapping[str, Any] | None = None,
    *,
    within: float = 30.0,
) -> Delivery:
    """Deliver ``messages`` to a built (and started) ``handler`` as the daemon would.

    ``delivery`` is the handler's delivery keys as in its ``[handlers.NAME]``
    table — ``{"batch": {"max": 10, "wait": "20ms"}, "retries": 1, "timeout":
    "2s"}`` — validated as the config is (:class:`~wsroute.ConfigError` if
    invalid); ``queue`` defaults to room for every message. Returns once every
    message was handled or dead-lettered, within ``within`` seconds
    (``TimeoutError`` otherwise).
    """
    from ..config import HandlerSection
    from ..handler import HandlerRunner
    from ..validate import convert_or_raise

    table = {"plugin": "test", "queue": max(1, len(messages)), **(delivery or {})}
    section = convert_or_raise(HandlerSection, table, "handlers.test")
    runner = HandlerRunner("test", section, _Calls(handler))
    letters = _Letters()
    dead = HandlerRunner("dead_letter", HandlerSection(plugin="test"), letters)
    runner.dead_letter = dead
    async with anyio.create_task_group() as tg:
        await tg.start(dead.run)
        await tg.start(runner.run)
        for message in messages:
            await runner.put(message)
        await wait_until(lambda: runner.idle() and dead.idle(), timeout=within)
        await runner.stop_workers("shutdown")
        await dead.stop_workers("shutdown")
    return Delivery(runner.snapshot(), letters.messages)
