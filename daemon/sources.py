"""A running source, supervised: ``run()`` restarted after a crash, stopped and closed in order.

A plugin bug in a source must not end the daemon: a crash is logged and
``run()`` starts again after a backoff (0.5 s doubling to 30 s, reset after
30 s of running). :meth:`SourceSupervisor.stop_reading` cancels it; after the
drain :meth:`SourceSupervisor.close` lets the source acknowledge what settled.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.abc
import structlog

from .contexts import DaemonSourceContext
from .failures import describe_failure

__all__ = ["SourceSupervisor"]


class SourceSupervisor:
    """Supervises one source: restarts ``run()`` after a crash, stops and closes it."""

    def __init__(self, name: str, instance: Any, ctx: DaemonSourceContext) -> None:
        self.name = name
        self.instance = instance
        self.ctx = ctx
        self._scope = anyio.CancelScope()
        self._stopped = anyio.Event()
        self._closed = False
        self.log = structlog.get_logger("wsroute.source").bind(source=name)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        delay = 0.5
        try:
            with self._scope:
                while True:
                    started = time.monotonic()
                    try:
                        await self.instance.run()
                        self.log.warning("source_returned")
                    except Exception as exc:  # a plugin bug must not end the daemon
                        self.log.exception("source_crashed", error=describe_failure(exc))
                    delay = 0.5 if time.monotonic() - started > 30 else min(delay * 2, 30.0)
                    await anyio.sleep(delay)
        finally:
            self._stopped.set()

    def stop_reading(self) -> None:
        self._scope.cancel()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def close(self) -> None:
        """After the drain: let the source acknowledge what settled and close its clients."""
        if self._closed:
            return
        self._closed = True
        close = getattr(self.instance, "close", None)
        if close is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(10) as scope:
            try:
                await close()
            except Exception as exc:
                self.log.error("source_close_failed", error=describe_failure(exc))
        if scope.cancelled_caught:
            self.log.error("source_close_timeout")
