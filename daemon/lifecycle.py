"""A handler plugin's own lifecycle around its messages: ``run()`` supervised, ``stop()``.

``start()`` (in the runner) opens what the plugin needs; an optional
``run(task_status=...)`` is its background work, started before the first
message and cancelled before ``stop()``; ``stop()`` flushes and closes.
Invariant: a plugin's failure here is a start failure (exit 78) or a log line,
never an exception that ends the daemon.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from .failures import describe_failure

__all__ = ["stop_plugin", "supervise_run"]

# A handler plugin's run() restarted after a crash: 0.5 s doubling to 30 s.
_RUN_RESTART_INITIAL = 0.5
_RUN_RESTART_MAX = 30.0


class _StartedOnce:
    """The ``task_status`` given to a plugin's ``run()``: only its first ``started()`` counts.

    Later calls — from a ``run()`` restarted after a crash — do nothing.
    """

    __slots__ = ("_status", "called")

    def __init__(self, status: anyio.abc.TaskStatus[Exception | None]) -> None:
        self._status = status
        self.called = False

    def started(self, value: None = None) -> None:
        if not self.called:
            self.called = True
            self._status.started(None)


async def supervise_run(
    run: Callable[..., Awaitable[None]],
    log: Any,
    *,
    task_status: anyio.abc.TaskStatus[Exception | None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The plugin's ``run(task_status=...)``: after ``start()``, cancelled before ``stop()``.

    The runner waits for its first ``task_status.started()`` before the first
    message; an exception before that is a start failure (``PluginError``,
    exit 78, as from ``start()``). A crash after it is logged
    (``handler_run_crashed``) and ``run`` is called again after a backoff
    (0.5 s doubling to 30 s, back to 0.5 s after 30 s without a crash), as a
    source is: messages keep being handed to ``handle()`` meanwhile. A ``run``
    that returns is not called again. Reports started with ``None``, or with
    the exception that failed the start (the runner raises it).
    """
    status = _StartedOnce(task_status)
    delay = _RUN_RESTART_INITIAL
    while True:
        began = time.monotonic()
        try:
            await run(task_status=status)
        except Exception as exc:
            if not status.called:  # still starting: a configuration problem, as start()
                task_status.started(exc)
                return
            log.exception("handler_run_crashed", error=describe_failure(exc))
        else:
            status.started()  # a run() that had nothing to wait for
            return
        quiet = time.monotonic() - began > _RUN_RESTART_MAX
        delay = _RUN_RESTART_INITIAL if quiet else min(delay * 2, _RUN_RESTART_MAX)
        await anyio.sleep(delay)


async def stop_plugin(instance: Any, log: Any) -> None:
    """The plugin's ``stop()``, shielded, within 10 s; a failure is logged, never raised."""
    stop = getattr(instance, "stop", None)
    if stop is None:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(10) as scope:
        try:
            await stop()
        except Exception as exc:
            log.error("handler_stop_failed", error=describe_failure(exc))
    if scope.cancelled_caught:
        log.error("handler_stop_timeout")
