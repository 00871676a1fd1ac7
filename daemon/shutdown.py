"""Shutdown in order: stop reading, close upstreams, drain, dead-letter, account.

:func:`stop_all` runs once, after a running reload finished: sources stop
reading and connections close (each ``$connected`` gets its
``$disconnected``); handlers drain for up to half of ``shutdown_timeout`` and
what they still hold is dead-lettered (or released, for a redelivering
source); the dead-letter handlers get the rest of the budget to write it;
sources acknowledge what settled; the delivery totals are logged.
``EXTEND_TIMEOUT_USEC`` keeps systemd from killing a drain that runs long.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import structlog

from .handler import HandlerRunner

if TYPE_CHECKING:
    from .service import Service

__all__ = ["drain_all", "log_handler_totals", "stop_all"]

log = structlog.get_logger("wsroute.service")


async def stop_all(service: Service) -> None:
    config = service.config
    started = time.monotonic()
    deadline = started + config.daemon.shutdown_timeout
    service.notifier.stopping()
    log.info("shutdown_started", shutdown_timeout=config.daemon.shutdown_timeout)
    for source in service.sources.values():
        source.stop_reading()
    for conn in service.connections.values():
        conn.stop("shutdown")
    with anyio.move_on_after(
        max(c.stop_timeout for c in service.connections.values()) if service.connections else 0
    ):
        for conn in service.connections.values():
            await conn.wait_stopped()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_extend_stop_timeout, service, deadline)
        await _drain_and_stop(service, started, deadline)
        tg.cancel_scope.cancel()
    for source in service.sources.values():
        await source.close()
    _log_totals(service, time.monotonic() - started)


async def _drain_and_stop(service: Service, started: float, deadline: float) -> None:
    """Two waves within one budget: handlers, then the dead-letter handlers.

    What a handler cannot finish is dead-lettered when its wave ends, and the
    dead-letter handlers must then have time to write it: while there are
    any, the first wave drains until the budget's midpoint at most (or until
    it is idle, if sooner), and the dead-letter handlers get all the rest.
    """
    targets = {r.dead_letter for r in service.runners.values() if r.dead_letter is not None}
    if service.dispatcher.dead_letter is not None:
        targets.add(service.dispatcher.dead_letter)
    first = [r for r in service.runners.values() if r not in targets]
    last = [r for r in service.runners.values() if r in targets]
    first_deadline = started + (deadline - started) / 2 if last else deadline
    await drain_all(first, first_deadline)
    for runner in first:
        await runner.stop_workers("shutdown")
    await drain_all(last, deadline)
    for runner in last:
        await runner.stop_workers("shutdown")


async def _extend_stop_timeout(service: Service, deadline: float) -> None:
    while True:
        left = deadline - time.monotonic() + 5.0
        service.notifier.extend_timeout(max(left, 5.0))
        await anyio.sleep(2.0)


def _log_totals(service: Service, took: float) -> None:
    for runner in service.runners.values():
        log_handler_totals(runner)
    for name, conn in service.connections.items():
        log.info(
            "connection_totals",
            connection=name,
            frames=conn.seq,
            decode_errors=conn.stats.decode_errors,
            unmatched=service.dispatcher.unmatched[name],
            reconnects=conn.stats.reconnects,
        )
    log.info("shutdown_complete", took=round(took, 3))


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
