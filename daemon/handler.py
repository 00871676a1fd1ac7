"""Delivery: each handler's workers, retries, timeouts, outages and dead letters.

Every message offered to a :class:`HandlerRunner` ends in exactly one of these
states, each counted in :class:`HandlerStats` and logged when it is not success:

- **handled** — ``handle()`` returned;
- **dead-lettered** — ``handle()`` failed ``retries + 1`` times, timed out, or
  the message was still queued or in flight at shutdown or removal: it goes to
  the dead-letter runner with a :class:`~wsroute.DeadLetter` reason;
- **dropped** — the queue was full and the operator chose ``drop-oldest`` or
  ``drop-newest`` (the queue and its bounds: :mod:`wsroute.handler_queue`).

So ``received = handled + dead_lettered + dropped + in_flight`` holds at every
moment (``in_flight`` = queued + held by a worker).

One delivery engine. A worker takes messages out of the queue into the list it
holds — one for a plugin's ``handle(message)``, up to ``max`` for its
``handle_batch(messages)`` with ``batch = { max, wait }`` (waiting up to
``wait`` for more once it holds one) — and makes one call: a batch of one, or
a batch. ``handle_batch`` returns ``None`` (all handled) or a mapping from
positions in the list to the errors of the messages that failed (the others
are handled); raising fails them all. Failed messages are retried together,
with backoff, each attempt bounded by ``timeout``, and each message that fails
``retries + 1`` attempts is dead-lettered alone with its own error. Every
message is counted as a message: a batch of ten that fails once adds ten
``failures``.

An outage (the call raised :class:`~wsroute.Unavailable`: the engine is
unavailable, the message is not at fault) is not a failed attempt: the worker
holds the message, waits with the handler's :class:`~wsroute.outage.Outage`
(capped, jittered backoff, logged once) and calls again, for as long as it
takes or until ``outage_timeout`` (then a dead letter, reason ``outage``).

A worker wakes up once when its queue turns non-empty and then drains
everything queued before it sleeps again.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import anyio
import anyio.abc
import structlog

from .ack import Ack
from .budget import MemoryBudget, message_size
from .config import HandlerSection
from .exceptions import PluginError
from .failures import describe_failure
from .handler_queue import HandlerQueue, HandlerStats
from .lifecycle import stop_plugin, supervise_run
from .outage import Outage, OutageExpired, Unavailable
from .plugin import DeadLetter, Message
from .records import record

__all__ = ["Ack", "HandlerRunner", "HandlerStats", "MemoryBudget", "message_size"]

log = structlog.get_logger("wsroute.handler")

# Yield to the event loop after this many messages handled without suspending,
# so a handler that never awaits cannot starve the readers and other handlers.
_YIELD_EVERY = 64
_RETRY_INITIAL = 0.1
_RETRY_MAX = 5.0

BatchResult = Mapping[int, BaseException] | None


class HandlerRunner(HandlerQueue):
    """One ``[handlers.NAME]``: the plugin instance, its queue, workers and accounting.

    Build it, set :attr:`dead_letter` to the runner dead letters go to (or leave
    ``None``: they are logged and counted as ``lost``), then ``await tg.start(runner.run)``.
    """

    def __init__(
        self,
        name: str,
        section: HandlerSection,
        instance: Any,
        *,
        plugin: str = "",
        budget: MemoryBudget | None = None,
    ) -> None:
        super().__init__(section, budget)
        self.name = name
        self.section = section
        self.instance = instance
        self.plugin = plugin
        #: The plugin started (``start()``, and ``run()`` reported started): it takes messages.
        self.started = False
        self.dead_letter: HandlerRunner | None = None
        self.log = log.bind(handler=name)
        #: The handler's engine outage state (/status, /metrics), named after its plugin.
        self.outage = Outage(plugin or name, self.log, timeout=section.outage_timeout)
        workers = section.concurrency
        # Per worker: the messages it holds (taken, being handled or retried), when the
        # current attempt started (inf: none running), its number, and the cancel scope
        # the watchdog cancels on a timeout.
        self._held: list[list[Message]] = [[] for _ in range(workers)]
        self._started: list[float] = [math.inf] * workers
        self._attempts: list[int] = [0] * workers
        self._scopes: list[anyio.CancelScope | None] = [None] * workers
        self._cancel = anyio.CancelScope()
        self._workers_done = anyio.Event()
        handle = instance.handle
        self._call: Callable[[Message], Awaitable[None]] = (
            handle if inspect.iscoroutinefunction(handle) else self._call_in_thread
        )
        handle_batch = getattr(instance, "handle_batch", None)
        self._batch = section.batch if callable(handle_batch) else None
        if section.batch is not None and self._batch is None:
            # A factory's product (a class is refused by the config check): say so once.
            self.log.warning("batch_ignored", reason="the plugin has no handle_batch(messages)")
        self._call_batch: Callable[[list[Message]], Awaitable[BatchResult]] = (
            handle_batch
            if handle_batch is not None and inspect.iscoroutinefunction(handle_batch)
            else self._call_batch_in_thread
        )

    # -- accounting ----------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Messages received and not yet settled: queued plus held by the workers."""
        return len(self._queue) + sum(map(len, self._held))

    def balanced(self) -> bool:
        """The accounting identity ``received = handled + dead_lettered + dropped + in_flight``.

        (Plus ``released``: messages of a redelivering source left unacknowledged at shutdown.)
        """
        s = self.stats
        settled = s.handled + s.dead_lettered + s.dropped + s.released
        return s.received == settled + self.in_flight

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict, for logs, STATUS= and metrics."""
        s = self.stats
        return {
            "received": s.received,
            "handled": s.handled,
            "dead_lettered": s.dead_lettered,
            "dropped": s.dropped,
            "in_flight": self.in_flight,
            "failures": s.failures,
            "retries": s.retries,
            "timeouts": s.timeouts,
            "lost": s.lost,
            "released": s.released,
            "outage": int(self.outage.active),
        }

    async def put(self, message: Message) -> None:
        """Queue a message, waiting for room under ``block`` (backpressure).

        If the runner stops accepting (the reason :meth:`close` was given:
        ``shutdown``, or ``removed`` by a reload), or the wait is cancelled
        (shutdown), the message is counted as received and dead-lettered: it
        was read, so it is accounted for.
        """
        try:
            while not self.offer(message):
                if not self._accepting:
                    self.stats.received += 1
                    self.abandon(message, self._closed_for)
                    return
                await self.wait_space()
        except anyio.get_cancelled_exc_class():
            self.stats.received += 1
            self.abandon(message, "shutdown")
            raise

    def still_working(self) -> None:
        """Tell the sources of the messages the workers hold that they are still handled."""
        if self.acks:
            for held in self._held:
                for message in held:
                    ack = self.acks.get(id(message))
                    if ack is not None:
                        ack.working()

    # -- workers -------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the plugin, run the workers until :meth:`stop_workers`, then stop the plugin."""
        start = getattr(self.instance, "start", None)
        if start is not None:
            try:
                await start()
            except Exception as exc:  # one line for the operator, exit 78: not a crash
                raise PluginError(f"handlers.{self.name}: could not start: {exc}") from exc
        failed: Exception | None = None
        try:
            with self._cancel:
                async with anyio.create_task_group() as tg:
                    run_plugin = getattr(self.instance, "run", None)
                    if run_plugin is not None:  # the plugin's background work, before messages
                        failed = await tg.start(supervise_run, run_plugin, self.log)
                    if failed is None:
                        for index in range(len(self._held)):
                            tg.start_soon(self._worker, index)
                        if self.section.timeout > 0:
                            tg.start_soon(self._watchdog)
                        self.started = True
                        task_status.started()
        finally:
            self._workers_done.set()
            await stop_plugin(self.instance, self.log)
        if failed is not None:  # raised out of the task group: no exception group around it
            raise PluginError(f"handlers.{self.name}: could not start: {failed}") from failed

    # Timeouts cost nothing per message: each worker runs inside one cancel scope,
    # records when the current attempt started, and a watchdog task cancels that
    # scope when an attempt overruns `timeout`. The worker then counts the timeout
    # and goes on with the messages' next attempt in a fresh scope. (A cancel
    # scope per attempt, the obvious way, took half of the per-frame budget.)

    async def _worker(self, index: int) -> None:
        while True:
            scope = anyio.CancelScope()
            self._scopes[index] = scope
            with scope:
                await self._work(index)
            # Only the watchdog cancels this scope: the attempt in hand timed out.
            held = self._held[index]
            if not held:  # pragma: no cover - the watchdog only fires mid-attempt
                continue
            self.stats.timeouts += len(held)
            error = f"TimeoutError: no result within {self.section.timeout:g}s"
            self._failed(index, held, [error] * len(held), "timeout")

    async def _work(self, index: int) -> None:
        """Take, call, settle; the first attempt's success is the per-message path."""
        queue = self._queue
        budget = self.budget
        acks = self.acks
        held = self._held
        started = self._started
        attempts = self._attempts
        stats = self.stats
        call = self._call
        single = self._batch is None
        monotonic = time.monotonic
        outage: Unavailable | None = None
        delays: Iterator[float] | None = None
        since_yield = 0
        while True:
            batch = held[index]
            failed: list[Message] = []
            problems: list[BaseException] = []
            if outage is not None:  # the held messages wait out the outage
                delays = delays or self.outage.delays()
                waited = await self._wait_outage(index, outage, delays)
                outage = None
                if not waited:
                    continue
            elif batch:  # a retry: the failed messages of the last attempt
                await anyio.sleep(_retry_delay(attempts[index] - 1))
            elif not single:
                await self._gather(index)
                batch = held[index]
                attempts[index] = 1
            elif queue:  # batches of one, inline: the per-message path
                attempts[index] = 1
                while queue:
                    message = queue.popleft()
                    size = len(message.raw)
                    self.queued_raw -= size
                    budget.raw -= size
                    if self._space is not None:
                        self._room()
                    batch.append(message)
                    started[index] = monotonic()
                    try:
                        await call(message)
                    except Exception as exc:
                        started[index] = math.inf
                        failed, problems = batch, [exc]  # its first attempt failed
                        break
                    # (`started` stays: the watchdog looks at held messages only.)
                    batch.clear()
                    stats.handled += 1
                    if acks:
                        self._settle(message)
                    if delays is not None:
                        delays = None
                        self.outage.recovered()
                    since_yield += 1
                    if since_yield >= _YIELD_EVERY:
                        since_yield = 0
                        await asyncio.sleep(0)  # let the readers in
                else:
                    continue
            else:
                # All workers wait on the same event. Once it fired, every waiter
                # was released, so clearing it cannot strand one.
                if self._item_set:
                    self._item.clear()
                    self._item_set = False
                if self.queued_raw:  # only if a queued message was changed: resync
                    self._resync()
                await self._item.wait()
                since_yield = 0
                continue
            if not failed:  # an attempt of what the worker holds (a batch, a retry)
                outcome = await self._attempt(index, batch, single)
                if outcome is None:
                    if delays is not None or not single:
                        delays = None
                        self.outage.recovered()
                    await asyncio.sleep(0)  # one batch at a time: let the readers in
                    continue
                failed, problems = outcome
            # Some failed: an outage holds them, anything else is a failed attempt.
            waiting: list[Message] = []
            if any(isinstance(p, Unavailable) for p in problems):
                outage = next(p for p in problems if isinstance(p, Unavailable))
                pairs = list(zip(failed, problems, strict=True))
                waiting = [m for m, p in pairs if isinstance(p, Unavailable)]
                failed = [m for m, p in pairs if not isinstance(p, Unavailable)]
                problems = [p for p in problems if not isinstance(p, Unavailable)]
            if failed:
                self._failed(index, failed, [_describe(p) for p in problems], "handler_error")
                backlog = self._backlog()
                if backlog is not None and not held[index] and not waiting:
                    await backlog.wait_below_limit()
            else:
                held[index] = []
            if waiting:
                held[index] = waiting + held[index]
            await asyncio.sleep(0)

    async def _attempt(
        self, index: int, batch: list[Message], single: bool
    ) -> tuple[list[Message], list[BaseException]] | None:
        """One call with the messages a worker holds; ``None``: all handled (settled),
        else the failed ones and their errors (the others settled)."""
        self._started[index] = time.monotonic()
        failures: BatchResult = None
        try:
            if single:
                await self._call(batch[0])
            else:
                failures = await self._call_batch(batch)
        except Exception as exc:
            self._started[index] = math.inf
            return batch, [exc] * len(batch)
        self._started[index] = math.inf
        if failures:
            return self._partial(batch, failures)
        self.stats.handled += len(batch)
        if self.acks:
            for message in batch:
                self._settle(message)
        self._held[index] = []  # a new list: the plugin may keep the one it was given
        return None

    def _partial(
        self, batch: list[Message], failures: Mapping[int, BaseException]
    ) -> tuple[list[Message], list[BaseException]]:
        """Settle the messages of ``batch`` not named by ``failures``; the failed ones."""
        failed: list[Message] = []
        problems: list[BaseException] = []
        for position, problem in failures.items():
            if 0 <= position < len(batch):
                failed.append(batch[position])
                problems.append(problem)
        if len(failed) < len(batch):
            gone = {id(m) for m in failed}
            for message in batch:
                if id(message) not in gone:
                    self.stats.handled += 1
                    self._settle(message)
        return failed, problems

    async def _wait_outage(self, index: int, outage: Unavailable, delays: Iterator[float]) -> bool:
        """Wait out an outage for the messages held; ``False`` if it expired (all dead-lettered)."""
        try:
            await self.outage.wait(outage, delays)
        except OutageExpired as exc:
            held, self._held[index] = self._held[index], []
            for message in held:
                self.give_up(message, "outage", error=str(exc), attempts=self._attempts[index])
            return False
        return True

    async def _gather(self, index: int) -> None:
        """Wait for a message, then take up to ``max``, waiting ``wait`` at most for more."""
        batch = self._batch
        assert batch is not None
        queue = self._queue
        held = self._held[index] = []
        deadline = math.inf
        while len(held) < batch.max:
            if queue:
                held.append(self._unqueue_oldest())
                if deadline == math.inf:
                    deadline = time.monotonic() + batch.wait
                continue
            self._room()
            if self._item_set:
                self._item.clear()
                self._item_set = False
            if self.queued_raw:
                self._resync()
            if not held:
                await self._item.wait()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._accepting:
                break
            with anyio.move_on_after(remaining):
                await self._item.wait()
        self._room()

    def _failed(self, index: int, failed: list[Message], errors: list[str], reason: str) -> None:
        """Count one failed attempt of each of ``failed``; keep them for the next
        attempt, or dead-letter each alone after the last."""
        attempt = self._attempts[index]
        stats = self.stats
        stats.failures += len(failed)
        # One message (a handler without handle_batch): the log line names it.
        named = (
            {"connection": failed[0].connection, "seq": failed[0].seq} if len(failed) == 1 else {}
        )
        if attempt > self.section.retries:
            self._held[index] = []
            self.log.error(
                "handler_failed",
                reason=reason,
                error=errors[0],
                count=len(failed),
                attempts=attempt,
                **named,
            )
            for message, error in zip(failed, errors, strict=True):
                self.give_up(message, reason, error=error, attempts=attempt)
            return
        stats.retries += len(failed)
        self._held[index] = failed
        self._attempts[index] = attempt + 1
        self.log.warning(
            "handler_retry",
            reason=reason,
            error=errors[0],
            count=len(failed),
            attempt=attempt,
            delay=_retry_delay(attempt),
            **named,
        )

    def _backlog(self) -> HandlerRunner | None:
        target = self.dead_letter
        if target is not None and target.dead_letter is None and target.full:
            return target
        return None

    async def _watchdog(self) -> None:
        """Cancel a worker's scope when its current attempt overran ``timeout``."""
        timeout = self.section.timeout
        interval = min(max(timeout / 20, 0.005), 0.25)
        started = self._started
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            for index, since in enumerate(started):
                scope = self._scopes[index]
                if now - since >= timeout and self._held[index] and scope:
                    started[index] = math.inf  # once per attempt
                    scope.cancel()

    async def _call_in_thread(self, message: Message) -> None:
        await anyio.to_thread.run_sync(self.instance.handle, message, abandon_on_cancel=True)

    async def _call_batch_in_thread(self, messages: list[Message]) -> BatchResult:
        result: BatchResult = await anyio.to_thread.run_sync(
            self.instance.handle_batch, messages, abandon_on_cancel=True
        )
        return result

    # -- dead letters and shutdown ------------------------------------------

    def give_up(
        self, message: Message, reason: str, *, error: str | None = None, attempts: int = 0
    ) -> None:
        """Count a message as dead-lettered and pass it to the dead-letter runner."""
        self.stats.dead_lettered += 1
        info = DeadLetter(reason=reason, handler=self.name, error=error, attempts=attempts)
        target = self.dead_letter
        letter = message.replace(dead_letter=info)
        ack = self.acks.pop(id(message), None) if self.acks else None
        if target is None or not target.accept_dead_letter(letter, ack):
            self.stats.lost += 1
            self.log.error(
                "message_lost",
                reason=reason,
                error=error,
                connection=message.connection,
                key=message.key,
                seq=message.seq,
                dead_letter=None if target is None else target.name,
                record=record(message),  # the message itself: the log is its last copy
            )
            if ack is not None:
                ack.done()

    def close(self, reason: str = "shutdown") -> None:
        """Stop accepting new messages (waiters under ``block`` are released, and
        their messages dead-lettered with ``reason``)."""
        self._accepting = False
        self._closed_for = reason
        self._room()
        if self._batch is not None and not self._item_set:
            # A worker waiting for a fuller batch sends what it holds now.
            self._item_set = True
            self._item.set()

    def idle(self) -> bool:
        """Nothing queued and nothing being handled."""
        return not self._queue and not any(self._held)

    async def drain(self, deadline: float) -> bool:
        """Wait until idle or until ``deadline`` (monotonic seconds); ``True`` if idle."""
        while not self.idle():
            if time.monotonic() >= deadline:
                return False
            await anyio.sleep(0.01)
        return True

    async def stop_workers(self, reason: str) -> None:
        """Cancel the workers; dead-letter what is still queued or was in flight."""
        self.close()
        self._cancel.cancel()
        await self._workers_done.wait()
        leftovers: list[Message] = []
        for held in self._held:
            leftovers.extend(held)
        self._held = [[] for _ in self._held]
        leftovers.extend(self._queue)
        self._queue.clear()
        self._resync()
        if leftovers:
            self.log.warning("handler_leftovers", reason=reason, count=len(leftovers))
        for message in leftovers:
            self.abandon(message, reason)

    def abandon(self, message: Message, reason: str) -> None:
        """A received message this handler will not finish: dead-letter it, or release it.

        Released: a source that redelivers (a Redis stream) gets it again later,
        so it is left unacknowledged instead of dead-lettered.
        """
        ack = self.acks.get(id(message)) if self.acks else None
        if ack is not None and ack.redeliver:
            del self.acks[id(message)]
            self.stats.released += 1
            ack.release()
            return
        self.give_up(message, reason)


def _retry_delay(failed_attempts: int) -> float:
    """Backoff before the next attempt: 0.1 s doubling per failed attempt, capped at 5 s."""
    return float(min(_RETRY_MAX, _RETRY_INITIAL * 2 ** (failed_attempts - 1)))


def _describe(error: BaseException) -> str:
    return describe_failure(error)  # the leaf of an exception group, not the group


def retry_budget(section: HandlerSection) -> float:
    """The longest a message can spend in one handler: attempts × timeout + backoff sleeps."""
    attempts = section.retries + 1
    if section.timeout <= 0:
        return math.inf
    sleeps = sum(_retry_delay(n) for n in range(1, section.retries + 1))
    return float(attempts * section.timeout + sleeps)
