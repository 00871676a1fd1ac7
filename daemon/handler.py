"""Delivery: each handler's bounded queue, its workers, retries, timeouts and dead letters.

Every message offered to a :class:`HandlerRunner` ends in exactly one of these
states, each counted in :class:`HandlerStats` and logged when it is not success:

- **handled** — ``handle()`` returned;
- **dead-lettered** — ``handle()`` failed ``retries + 1`` times, timed out, or
  the message was still queued or in flight at shutdown or removal: it goes to
  the dead-letter runner with a :class:`~wsroute.DeadLetter` reason;
- **dropped** — the queue was full and the operator chose ``drop-oldest`` or
  ``drop-newest``.

An outage (``handle()`` raised :class:`~wsroute.Unavailable`: the engine is
unavailable, the message is not at fault) is not a failed attempt: the worker
holds the message, waits with the handler's :class:`~wsroute.outage.Outage`
(capped, jittered backoff, logged once) and calls again, for as long as it
takes or until ``outage_timeout`` (then a dead letter, reason ``outage``).

So ``received = handled + dead_lettered + dropped + in_flight`` holds at every
moment (``in_flight`` = queued + being handled).

A queue is bounded twice: ``queue`` messages and ``queue_bytes`` bytes, a
message's bytes being :func:`message_size` — three times the length of its raw
frame, an O(1) estimate that never walks the body. It takes a message while it
holds fewer than both (so one message larger than ``queue_bytes`` still goes
through, alone), and ``overflow`` applies when either bound is reached. Every
queued byte is also counted in a :class:`MemoryBudget` shared by all runners,
the daemon-wide ``memory_budget``: the dispatcher pauses readers above it. On
the per-message path both are kept in *raw* units (the frames' lengths, with
the limits divided by three): one ``len()`` and two integer adds per message
and queue.

The hot path is :meth:`HandlerRunner.offer`: synchronous, no task switch. A
worker wakes up once when its queue turns non-empty and then drains everything
queued before it sleeps again.

Batches: with ``batch = { max, wait }`` and a plugin that has
``handle_batch(messages)``, a worker takes up to ``max`` queued messages
(waiting up to ``wait`` for more once it holds one) and makes one call. The
call returns ``None`` (all handled) or a mapping from positions in the list to
the errors of the messages that failed (the others are handled); raising fails
them all. Failed messages are retried together, with the same backoff, each
attempt bounded by ``timeout``, and each message that fails ``retries + 1``
attempts is dead-lettered alone with its own error. Every message is counted
as a message: a batch of ten that fails once adds ten ``failures``.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import operator
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import structlog

from .ack import Ack
from .budget import MemoryBudget, message_size
from .config import HandlerSection
from .exceptions import PluginError
from .failures import describe_failure
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
_raw = operator.attrgetter("raw")


@dataclass
class HandlerStats:
    """Counters of one handler; ``in_flight`` comes from the runner."""

    received: int = 0
    handled: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    failures: int = 0  # failed attempts, retried or not
    retries: int = 0  # failed attempts followed by another attempt
    timeouts: int = 0
    lost: int = 0  # dead letters no dead-letter handler could take (logged)
    released: int = 0  # source messages left unacknowledged at shutdown, redelivered later


class HandlerRunner:
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
        self.name = name
        self.section = section
        self.instance = instance
        self.plugin = plugin
        self.stats = HandlerStats()
        #: The plugin started (``start()``, and ``run()`` reported started): it takes messages.
        self.started = False
        self.dead_letter: HandlerRunner | None = None
        #: The API's ``/tap`` hook while someone taps the daemon (``None`` otherwise):
        #: the dead letters this runner takes are shown to taps on it, with their reason.
        self.tap: Callable[[Message, tuple[HandlerRunner, ...]], None] | None = None
        self.log = log.bind(handler=name)
        #: The handler's engine outage state (/status, /metrics), named after its plugin.
        self.outage = Outage(plugin or name, self.log, timeout=section.outage_timeout)
        self._queue: deque[Message] = deque()
        #: The acknowledgement of each queued or in-flight message that has one (a
        #: source's), by ``id(message)``: set by whoever queues the message, taken
        #: when it settles. Empty for connections: one truthiness test per message.
        self.acks: dict[int, Ack] = {}
        #: Raw frame bytes queued now (see :func:`message_size`; ``queued_bytes`` is 3x).
        self.queued_raw = 0
        #: The daemon-wide budget these bytes count in (its own, unlimited, if none given).
        self.budget = MemoryBudget() if budget is None else budget
        self._limit = section.queue
        self._raw_limit = max(1, section.queue_bytes // 3)
        self._policy = section.overflow
        self._busy: list[Message | None] = [None] * section.concurrency
        # Per worker, in batch mode: the messages it holds (gathered, or being retried).
        self._held: list[list[Message]] = [[] for _ in range(section.concurrency)]
        # Per worker: when the current attempt started (inf: none running), its number,
        # and the cancel scope the watchdog cancels on a timeout.
        self._started: list[float] = [math.inf] * section.concurrency
        self._attempts: list[int] = [0] * section.concurrency
        self._scopes: list[anyio.CancelScope | None] = [None] * section.concurrency
        # Set when a message is queued; workers with an empty queue wait on it. ``_item_set``
        # mirrors it, as offer() runs per message. An asyncio.Event, cleared and reused:
        # at moderate rates a worker sleeps after every message, and a new anyio.Event
        # per wake-up (its backend looked up each time) cost ~3 µs of a ~50 µs frame.
        self._item = asyncio.Event()
        self._item_set = False
        self._space: anyio.Event | None = None
        self._accepting = True
        self._closed_for = "shutdown"
        self._cancel = anyio.CancelScope()
        self._workers_done = anyio.Event()
        handle = instance.handle
        self._call: Callable[[Message], Awaitable[None]]
        if inspect.iscoroutinefunction(handle):
            self._call = handle
        else:
            self._call = self._call_in_thread
        handle_batch = getattr(instance, "handle_batch", None)
        self._batch = section.batch if callable(handle_batch) else None
        if section.batch is not None and self._batch is None:
            # A factory's product (a class is refused by the config check): say so once.
            self.log.warning("batch_ignored", reason="the plugin has no handle_batch(messages)")
        self._call_batch: Callable[[list[Message]], Awaitable[Mapping[int, BaseException] | None]]
        if handle_batch is not None and inspect.iscoroutinefunction(handle_batch):
            self._call_batch = handle_batch
        else:
            self._call_batch = self._call_batch_in_thread
        self._drop_logged_at = 0.0

    # -- accounting ----------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes queued now, estimated (:func:`message_size` of every queued message)."""
        return self.queued_raw * 3

    @property
    def in_flight(self) -> int:
        """Messages received and not yet settled: queued plus being handled."""
        held = sum(len(h) for h in self._held) if self._batch is not None else 0
        return len(self._queue) + sum(1 for m in self._busy if m is not None) + held

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

    # -- the hot path --------------------------------------------------------

    def offer(self, message: Message) -> bool:
        """Queue a message without waiting. ``False``: full under ``block``; call again later.

        Full: ``queue`` messages or ``queue_bytes`` bytes queued. Under
        ``drop-oldest``/``drop-newest`` a full queue drops a message (counted,
        logged at most once a second) and this returns ``True``: drop-oldest drops
        the oldest until the queue is below both bounds again.
        """
        queue = self._queue
        if len(queue) >= self._limit or self.queued_raw >= self._raw_limit:
            if self._policy == "block" or not self._accepting:
                return False
            self.stats.received += 1
            if self._policy == "drop-newest":
                self._drop(message)
                return True
            self._drop_oldest()
        else:
            self.stats.received += 1
        size = len(message.raw)  # message_size() // 3, inlined
        queue.append(message)
        self.queued_raw += size
        self.budget.raw += size
        if not self._item_set:
            self._item_set = True
            self._item.set()
        return True

    def offer_many(self, messages: list[Message]) -> int:
        """:meth:`offer` for each of ``messages`` in order, in one step; how many were taken.

        Fewer than all: the queue filled under ``block`` (the rest wait, in order, for
        :meth:`put`). One extend, one update of the accounts and at most one wake-up
        of the workers when every message fits, which is what a socket read's
        messages do while the handler keeps up.
        """
        queue = self._queue
        count = len(messages)
        if not count:
            return 0
        size = sum(map(len, map(_raw, messages)))
        # Every message fits when the last one would: fewer than `queue` messages and
        # `queue_bytes` bytes queued before it (offer()'s test, for the last one).
        if (
            len(queue) + count <= self._limit
            and self.queued_raw + size - len(messages[-1].raw) < self._raw_limit
        ):
            queue.extend(messages)
            self.stats.received += count
            self.queued_raw += size
            self.budget.raw += size
            if not self._item_set:
                self._item_set = True
                self._item.set()
            return count
        offer = self.offer
        for taken, message in enumerate(messages):
            if not offer(message):
                return taken
        return count

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

    async def wait_space(self) -> None:
        """Wait until the queue has room again (or the runner stops accepting)."""
        if len(self._queue) < self._limit and self.queued_raw < self._raw_limit:
            return
        if self._space is None:
            self._space = anyio.Event()
        await self._space.wait()

    @property
    def full(self) -> bool:
        """The queue holds ``queue`` messages or ``queue_bytes`` bytes or more (dead
        letters may pass the limits)."""
        return len(self._queue) >= self._limit or self.queued_raw >= self._raw_limit

    async def wait_below_limit(self) -> None:
        """Backpressure for dead letters: wait until the queue is below its limit again.

        Dead letters are queued past the limit (never dropped), so whoever
        produces them — the reader for undecodable frames, a failing handler's
        worker — waits here; a flood of them cannot grow the queue without bound.
        Returns once the runner stops accepting (shutdown).
        """
        while self.full and self._accepting:
            await self.wait_space()

    def _unqueue_oldest(self) -> Message:
        """Take the oldest queued message out, and its bytes out of the accounts."""
        message = self._queue.popleft()
        size = len(message.raw)
        self.queued_raw -= size
        self.budget.raw -= size
        return message

    def _resync(self) -> None:
        """The queue is empty: its bytes are 0. Only a message whose ``raw`` was
        changed while queued (they are read-only) leaves anything to correct."""
        self.budget.raw -= self.queued_raw
        self.queued_raw = 0

    def _drop_oldest(self) -> None:
        """drop-oldest: drop until below both bounds (a message is about to be queued)."""
        queue = self._queue
        while queue and (len(queue) >= self._limit or self.queued_raw >= self._raw_limit):
            self._drop(self._unqueue_oldest())

    def _settle(self, message: Message) -> None:
        """The message left this runner for good (handled, dropped): acknowledge it."""
        if self.acks:
            ack = self.acks.pop(id(message), None)
            if ack is not None:
                ack.done()

    def still_working(self) -> None:
        """Tell the sources of the messages the workers hold that they are still handled."""
        if self.acks:
            for message in [*self._busy, *(m for held in self._held for m in held)]:
                ack = None if message is None else self.acks.get(id(message))
                if ack is not None:
                    ack.working()

    def _drop(self, message: Message) -> None:
        self.stats.dropped += 1
        self.budget.overflowed = True  # the reader gives way to the workers once
        self._settle(message)
        now = time.monotonic()
        if now - self._drop_logged_at >= 1.0:
            self._drop_logged_at = now
            self.log.warning(
                "message_dropped",
                policy=self._policy,
                connection=message.connection,
                seq=message.seq,
                dropped_total=self.stats.dropped,
            )

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
                        worker = self._worker if self._batch is None else self._batch_worker
                        for index in range(len(self._busy)):
                            tg.start_soon(worker, index)
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
    # and goes on with the message's next attempt in a fresh scope. (A cancel
    # scope per attempt, the obvious way, took half of the per-frame budget.)

    async def _worker(self, index: int) -> None:
        resume: tuple[Message, int] | None = None
        while True:
            scope = anyio.CancelScope()
            self._scopes[index] = scope
            with scope:
                await self._work(index, resume)
            # Only the watchdog cancels this scope: the message in hand timed out.
            resume = self._timed_out(index)

    async def _work(self, index: int, resume: tuple[Message, int] | None) -> None:
        if resume is not None:
            await self._finish(index, *resume)
        # The per-message path, inlined: the first attempt's success costs no extra
        # coroutine; failures and retries go through _finish.
        queue = self._queue
        budget = self.budget
        acks = self.acks
        busy = self._busy
        started = self._started
        attempts = self._attempts
        stats = self.stats
        call = self._call
        monotonic = time.monotonic
        since_yield = 0
        while True:
            if not queue:
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
            message = queue.popleft()
            size = len(message.raw)  # message_size() // 3, inlined
            self.queued_raw -= size
            budget.raw -= size
            space = self._space
            if space is not None:
                self._space = None
                space.set()
            busy[index] = message
            attempts[index] = 1
            started[index] = monotonic()
            try:
                await call(message)
            except Exception as exc:
                started[index] = math.inf
                if isinstance(exc, Unavailable):
                    await self._finish(index, message, 1, exc)
                    continue
                stats.failures += 1
                if self._failed(message, 1, "handler_error", _describe(exc)):
                    await self._finish(index, message, 2)
                else:
                    busy[index] = None
                    backlog = self._backlog()
                    if backlog is not None:
                        await backlog.wait_below_limit()
            else:
                started[index] = math.inf
                busy[index] = None
                stats.handled += 1
                if acks:
                    ack = acks.pop(id(message), None)
                    if ack is not None:
                        ack.done()
            since_yield += 1
            if since_yield >= _YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)

    async def _finish(
        self, index: int, message: Message, attempt: int, outage: Unavailable | None = None
    ) -> None:
        self._busy[index] = message
        backlog = await self._deliver(index, message, attempt, outage)
        self._busy[index] = None
        if backlog is not None:
            await backlog.wait_below_limit()

    async def _deliver(
        self, index: int, message: Message, attempt: int, outage: Unavailable | None = None
    ) -> HandlerRunner | None:
        """Attempts ``attempt`` .. ``retries + 1`` with backoff, then dead-letter;
        an outage (``outage``: the error that began it) is waited out between them.

        Returns the dead-letter runner to wait for when it is over its limit
        (only a terminal one: it waits on nobody, so no cycle can deadlock).
        """
        started = self._started
        attempts = self._attempts
        delays = None
        while True:
            started[index] = math.inf  # waiting to retry is not part of the budget
            if outage is not None:
                if delays is None:
                    delays = self.outage.delays()
                try:
                    await self.outage.wait(outage, delays)
                except OutageExpired as exc:
                    self.give_up(message, "outage", error=str(exc), attempts=attempt)
                    return self._backlog()
                outage = None
            elif attempt > 1:
                await anyio.sleep(_retry_delay(attempt - 1))
            attempts[index] = attempt
            started[index] = time.monotonic()
            try:
                await self._call(message)
            except Unavailable as exc:
                outage = exc
            except Exception as exc:
                started[index] = math.inf
                self.stats.failures += 1
                if not self._failed(message, attempt, "handler_error", _describe(exc)):
                    return self._backlog()
                attempt += 1
            else:
                started[index] = math.inf
                self.stats.handled += 1
                self._settle(message)
                self.outage.recovered()
                return None

    def _failed(self, message: Message, attempt: int, reason: str, error: str) -> bool:
        """Log a failed attempt; ``True`` if another follows, else the message is given up."""
        if attempt > self.section.retries:
            self.log.error(
                "handler_failed",
                reason=reason,
                error=error,
                connection=message.connection,
                seq=message.seq,
                attempts=attempt,
            )
            self.give_up(message, reason, error=error, attempts=attempt)
            return False
        self.log.warning(
            "handler_retry",
            reason=reason,
            error=error,
            connection=message.connection,
            seq=message.seq,
            attempt=attempt,
            delay=_retry_delay(attempt),
        )
        self.stats.retries += 1
        return True

    def _backlog(self) -> HandlerRunner | None:
        target = self.dead_letter
        if target is not None and target.dead_letter is None and target.full:
            return target
        return None

    def _timed_out(self, index: int) -> tuple[Message, int] | None:
        """Count the timeout of the message in hand; what to resume with, if anything."""
        message = self._busy[index]
        if message is None:  # pragma: no cover - the watchdog only fires mid-attempt
            return None
        attempt = self._attempts[index]
        self.stats.failures += 1
        self.stats.timeouts += 1
        error = f"TimeoutError: no result within {self.section.timeout:g}s"
        if self._failed(message, attempt, "timeout", error):
            return message, attempt + 1
        self._busy[index] = None
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
                busy = self._busy[index] is not None or self._held[index]
                if now - since >= timeout and busy and scope:
                    started[index] = math.inf  # once per attempt
                    scope.cancel()

    async def _call_in_thread(self, message: Message) -> None:
        await anyio.to_thread.run_sync(self.instance.handle, message, abandon_on_cancel=True)

    async def _call_batch_in_thread(
        self, messages: list[Message]
    ) -> Mapping[int, BaseException] | None:
        result: Mapping[int, BaseException] | None = await anyio.to_thread.run_sync(
            self.instance.handle_batch, messages, abandon_on_cancel=True
        )
        return result

    # -- batches -------------------------------------------------------------

    async def _batch_worker(self, index: int) -> None:
        while True:
            scope = anyio.CancelScope()
            self._scopes[index] = scope
            with scope:
                await self._batch_work(index)
            # Only the watchdog cancels this scope: the attempt in hand timed out.
            held = self._held[index]
            if not held:  # pragma: no cover - the watchdog only fires mid-attempt
                continue
            self.stats.timeouts += len(held)
            error = f"TimeoutError: no result within {self.section.timeout:g}s"
            self._batch_failed(index, list(held), [error] * len(held), "timeout")

    async def _batch_work(self, index: int) -> None:
        held = self._held
        started = self._started
        attempts = self._attempts
        stats = self.stats
        outage: Unavailable | None = None
        delays = None
        while True:
            if outage is not None:  # the held messages wait out the outage
                if delays is None:
                    delays = self.outage.delays()
                if not await self._batch_outage(index, outage, delays):
                    outage = None
                    continue
                outage = None
            elif held[index]:  # a retry: the failed messages of the last attempt
                await anyio.sleep(_retry_delay(attempts[index] - 1))
            else:
                await self._gather(index)
                attempts[index] = 1
            batch = held[index]
            started[index] = time.monotonic()
            try:
                failures = await self._call_batch(batch)
            except Exception as exc:
                started[index] = math.inf
                failed = batch
                problems: list[BaseException] = [exc] * len(batch)
            else:
                started[index] = math.inf
                failed, problems = [], []
                if not failures:  # the usual case: the whole batch handled
                    stats.handled += len(batch)
                    if self.acks:
                        for message in batch:
                            self._settle(message)
                else:
                    for position, problem in failures.items():
                        if 0 <= position < len(batch):
                            failed.append(batch[position])
                            problems.append(problem)
                    if len(failed) < len(batch):
                        gone = {id(m) for m in failed}
                        for message in batch:
                            if id(message) not in gone:
                                stats.handled += 1
                                self._settle(message)
            waiting = [
                m for m, p in zip(failed, problems, strict=True) if isinstance(p, Unavailable)
            ]
            if waiting:
                outage = next(p for p in problems if isinstance(p, Unavailable))
                refused = [
                    (m, p)
                    for m, p in zip(failed, problems, strict=True)
                    if not isinstance(p, Unavailable)
                ]
                failed = [m for m, _ in refused]
                problems = [p for _, p in refused]
            errors = [_describe(p) for p in problems]
            if failed:
                self._batch_failed(index, failed, errors, "handler_error")
                backlog = self._backlog()
                if backlog is not None and not held[index] and not waiting:
                    await backlog.wait_below_limit()
            else:
                held[index] = []
                if not waiting:
                    delays = None
                    self.outage.recovered()
            if waiting:
                held[index] = waiting + held[index]
            await asyncio.sleep(0)  # one batch at a time: let the readers in

    async def _batch_outage(self, index: int, outage: Unavailable, delays: Iterator[float]) -> bool:
        """Wait out an outage for the batch held; ``False`` if it expired (all dead-lettered)."""
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
                message = queue.popleft()
                size = len(message.raw)
                self.queued_raw -= size
                self.budget.raw -= size
                held.append(message)
                if deadline == math.inf:
                    deadline = time.monotonic() + batch.wait
                continue
            space = self._space
            if space is not None:
                self._space = None
                space.set()
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
        space = self._space
        if space is not None:
            self._space = None
            space.set()

    def _batch_failed(
        self, index: int, failed: list[Message], errors: list[str], reason: str
    ) -> None:
        """Count one failed attempt of each of ``failed``; keep them for the next
        attempt, or dead-letter each alone after the last."""
        attempt = self._attempts[index]
        stats = self.stats
        stats.failures += len(failed)
        if attempt > self.section.retries:
            self._held[index] = []
            self.log.error(
                "handler_failed",
                reason=reason,
                error=errors[0],
                count=len(failed),
                attempts=attempt,
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
        )

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

    def accept_dead_letter(self, letter: Message, ack: Ack | None = None) -> bool:
        """Queue a dead letter even past the queue limit: dead letters are never dropped.

        ``ack``: the acknowledgement the letter's message carried, settled once this
        handler wrote it. ``False`` (and ``ack`` untouched) when not accepting.
        """
        if not self._accepting:
            return False
        if ack is not None:
            self.acks[id(letter)] = ack
        self.stats.received += 1
        size = len(letter.raw)
        self._queue.append(letter)
        self.queued_raw += size
        self.budget.raw += size
        if not self._item_set:
            self._item_set = True
            self._item.set()
        if self.tap is not None:
            self.tap(letter, (self,))
        return True

    def close(self, reason: str = "shutdown") -> None:
        """Stop accepting new messages (waiters under ``block`` are released, and
        their messages dead-lettered with ``reason``)."""
        self._accepting = False
        self._closed_for = reason
        if self._space is not None:
            self._space.set()
            self._space = None
        if self._batch is not None and not self._item_set:
            # A worker waiting for a fuller batch sends what it holds now.
            self._item_set = True
            self._item.set()

    def idle(self) -> bool:
        """Nothing queued and nothing being handled."""
        return not self._queue and all(m is None for m in self._busy) and not any(self._held)

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
        leftovers = [m for m in self._busy if m is not None]
        self._busy = [None] * len(self._busy)
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
