"""Shutdown in order: stop reading, close upstreams, drain, dead-letter, account.

:func:`stop_all` is the operation :class:`~wsroute.service.Service` runs once
(on SIGTERM, after a running reload finished), on the parts it owns: sources stop
reading and connections close (each ``$connected`` gets its
``$disconnected``); handlers drain for up to half of ``shutdown_timeout`` and
what they still hold is dead-lettered (or released, for a redelivering
source); the dead-letter handlers get the rest of the budget to write it;
sources acknowledge what settled; the delivery totals are logged.
``EXTEND_TIMEOUT_USEC`` keeps systemd from killing a drain that runs long.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio
import structlog

from .handler import HandlerRunner

if TYPE_CHECKING:
    from .connection import Connection
    from .dispatch import Dispatcher
    from .notify import Notifier
    from .sources import SourceSupervisor

__all__ = ["drain_all", "log_handler_totals", "stop_all"]

log = structlog.get_logger("wsroute.service")


async def stop_all(
    *,
    runners: Mapping[str, HandlerRunner],
    connections: Mapping[str, Connection],
    sources: Mapping[str, SourceSupervisor],
    dispatcher: Dispatcher,
    notifier: Notifier,
    timeout: float,
) -> None:
    """Stop everything within ``timeout`` seconds (``[daemon] shutdown_timeout``)."""
    started = time.monotonic()
    deadline = started + timeout
    notifier.stopping()
    log.info("shutdown_started", shutdown_timeout=timeout)
    for source in sources.values():
        source.stop_reading()
    for conn in connections.values():
        conn.stop("shutdown")
    with anyio.move_on_after(
        max(c.stop_timeout for c in connections.values()) if connections else 0
    ):
        for conn in connections.values():
            await conn.wait_stopped()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_extend_stop_timeout, notifier, deadline)
        await _drain_and_stop(list(runners.values()), dispatcher.dead_letter, started, deadline)
        tg.cancel_scope.cancel()
    for source in sources.values():
        await source.close()
    for runner in runners.values():
        log_handler_totals(runner)
    for name, conn in connections.items():
        log.info(
            "connection_totals",
            connection=name,
            frames=conn.seq,
            decode_errors=conn.stats.decode_errors,
            unmatched=dispatcher.unmatched[name],
            reconnects=conn.stats.reconnects,
        )
    log.info("shutdown_complete", took=round(time.monotonic() - started, 3))


async def _drain_and_stop(
    runners: list[HandlerRunner],
    daemon_dead_letter: HandlerRunner | None,
    started: float,
    deadline: float,
) -> None:
    """Two waves within one budget: handlers, then the dead-letter handlers.

    What a handler cannot finish is dead-lettered when its wave ends, and the
    dead-letter handlers must then have time to write it: while there are
    any, the first wave drains until the budget's midpoint at most (or until
    it is idle, if sooner), and the dead-letter handlers get all the rest.
    """
    targets = {r.dead_letter for r in runners if r.dead_letter is not None}
    if daemon_dead_letter is not None:
        targets.add(daemon_dead_letter)
    first = [r for r in runners if r not in targets]
    last = [r for r in runners if r in targets]
    first_deadline = started + (deadline - started) / 2 if last else deadline
    await drain_all(first, first_deadline)
    for runner in first:
        await runner.stop_workers("shutdown")
    await drain_all(last, deadline)
    for runner in last:
        await runner.stop_workers("shutdown")


async def _extend_stop_timeout(notifier: Notifier, deadline: float) -> None:
    while True:
        left = deadline - time.monotonic() + 5.0
        notifier.extend_timeout(max(left, 5.0))
        await anyio.sleep(2.0)


def log_handler_totals(runner: HandlerRunner) -> None:
    counts = runner.snapshot()
    if runner.balanced():
        log.info("delivery_totals", handler=runner.name, **counts)
    else:
        log.error("delivery_unbalanced", handler=runner.name, **counts)


async def drain_all(
    runners: list[HandlerRunner], deadline: float, reason: str = "shutdown"
) -> None:
    for runner in runners:
        runner.close(reason)
    for runner in runners:
        if not await runner.drain(deadline):
            break
