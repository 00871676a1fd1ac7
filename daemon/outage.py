"""Outage or failure: the one rule of every built-in sink, public for third-party ones.

An engine that is **unavailable** — it cannot be reached, the connection was
lost, it did not answer in time, it is electing a leader, loading, or out of
disk space — is an *outage*: the message is not at fault, so it is not
failed. Whoever holds it waits (capped, jittered exponential backoff, at
least a ``Retry-After`` the engine asked for) and sends the same message
again, with the same idempotency key, until the engine is back. An engine
that **refused this message** (an HTTP 400, a Redis ``WRONGTYPE``, a payload
over the server's limit) is a *failure*: the handler's ``retries``, then the
dead letter.

A sink signals an outage by raising :class:`Unavailable` (or a subclass) from
``handle()``/``handle_batch()``; any other exception is a failure. The daemon
then holds the message in the handler, logs ``<engine>_unavailable`` once per
outage and ``<engine>_recovered`` with its length, and shows the outage in
``/status`` and ``/metrics``. :class:`Outage` is the state machine behind
that, usable on its own by a source or a plugin with a loop of its own:
:meth:`Outage.call` runs a command until it succeeds or fails for good.

Invariants: an :class:`Outage` never sleeps past its ``timeout`` (it raises
:class:`OutageExpired` instead), logs exactly one ``_unavailable`` and one
``_recovered`` per outage, and its waits are cancellable (a stop cancels them).
"""

from __future__ import annotations

import errno
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import anyio
from structlog.typing import FilteringBoundLogger

from .exceptions import OutageExpired, Unavailable
from .failures import describe_failure

__all__ = [
    "Outage",
    "OutageExpired",
    "Unavailable",
    "backoff",
    "is_outage",
    "is_outage_status",
]

T = TypeVar("T")

#: The first wait of an outage, before jitter; it doubles per wait.
INITIAL = 0.1
#: The longest wait between two tries, before jitter.
CAP = 2.0
#: The longest ``Retry-After`` honoured as it is (longer ones are cut to it).
RETRY_AFTER_CAP = 300.0

# OS errors that mean "not reachable now", not "this message is wrong".
_OUTAGE_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.ENOTCONN,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EAGAIN,
    }
)


def is_outage_status(status: int) -> bool:
    """An HTTP status that means the server is unavailable: 5xx, 408 and 429."""
    return status >= 500 or status in (408, 429)


def is_outage(error: BaseException) -> bool:
    """The generic part of the rule: :class:`Unavailable`, a timeout, a connection
    error, or an ``OSError`` of an unreachable peer or a full disk (``ENOSPC``).

    Engine-specific errors (a Redis ``LOADING``, a JetStream ``no response from
    stream``) are classified by each sink, which raises :class:`Unavailable` for them.
    """
    if isinstance(error, Unavailable | TimeoutError | ConnectionError):
        return True
    return isinstance(error, OSError) and error.errno in _OUTAGE_ERRNOS


def backoff(initial: float = INITIAL, cap: float = CAP) -> Iterator[float]:
    """Delays: ``initial`` doubling up to ``cap``, each jittered down by up to half, so
    that the holders of one outage (workers, daemons restarted together) spread out."""
    delay = initial
    while True:
        yield delay * random.uniform(0.5, 1.0)
        delay = min(cap, delay * 2)


def _describe(error: BaseException) -> str:
    return describe_failure(error)  # the leaf of an exception group, not the group


def _event_name(engine: str) -> str:
    # "jsonl" stays "jsonl"; "package.module:RecordSink" becomes "recordsink".
    last = engine.rsplit(":", 1)[-1].rsplit(".", 1)[-1].lower()
    return re.sub(r"[^a-z0-9]+", "_", last) or "sink"


class Outage:
    """One engine's outage as one handler (or source) sees it: waits, logs, counts.

    ``engine`` names the log events; ``log`` is the bound logger to write them
    to; ``timeout`` (seconds, ``None``: wait as long as it takes) is how long an
    outage may last before :meth:`wait` raises :class:`OutageExpired`.
    Several tasks may wait out the same outage: it is logged once.
    """

    def __init__(
        self,
        engine: str,
        log: FilteringBoundLogger,
        *,
        timeout: float | None = None,
        initial: float = INITIAL,
        cap: float = CAP,
    ) -> None:
        self.engine = _event_name(engine)
        self.log = log
        self.timeout = timeout
        self.initial = initial
        self.cap = cap
        #: When the current outage began (``time.monotonic()``); ``None``: no outage.
        self.since: float | None = None
        #: The error that began the current outage (or the last one), for /status.
        self.error: str | None = None
        #: Outages that ended, and their seconds.
        self.count = 0
        self._ended_seconds = 0.0
        self._logged_as = self.engine

    @property
    def active(self) -> bool:
        """An outage is going on."""
        return self.since is not None

    @property
    def seconds(self) -> float:
        """How long the current outage has lasted so far (0 when none)."""
        return 0.0 if self.since is None else time.monotonic() - self.since

    @property
    def seconds_total(self) -> float:
        """Seconds spent in outages so far, the current one included."""
        return self._ended_seconds + self.seconds

    def expired(self) -> bool:
        """The current outage has lasted ``timeout`` or longer."""
        return self.timeout is not None and self.since is not None and self.seconds >= self.timeout

    def failed(self, error: BaseException, **context: object) -> None:
        """Note an outage error; the first of an outage is logged (``<engine>_unavailable``)."""
        if self.since is not None:
            return
        self.since = time.monotonic()
        self.error = _describe(error)
        engine = getattr(error, "engine", None)
        self._logged_as = _event_name(engine) if isinstance(engine, str) else self.engine
        self.log.error(
            f"{self._logged_as}_unavailable",
            error=self.error,
            outage_timeout=self.timeout,
            **context,
        )

    def recovered(self, **context: object) -> None:
        """A command succeeded: end the outage, if one was going on (``<engine>_recovered``)."""
        since = self.since
        if since is None:
            return
        took = time.monotonic() - since
        self.since = None
        self.count += 1
        self._ended_seconds += took
        self.log.warning(f"{self._logged_as}_recovered", down_for=round(took, 3), **context)

    async def wait(self, error: BaseException, delays: Iterator[float], **context: object) -> None:
        """Wait before the next try: the next of ``delays`` (from :func:`backoff`), at least
        the error's ``retry_after``, never past ``timeout``.

        Raises :class:`OutageExpired` once the outage lasted ``timeout``.
        Cancellable: a stop ends the wait.
        """
        self.failed(error, **context)
        if self.expired():
            raise OutageExpired(
                f"{self._logged_as} unavailable for {self.seconds:.1f}s "
                f"(outage_timeout {self.timeout:g}s): {self.error}"
            ) from error
        delay = next(delays)
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > delay:
            delay = min(float(retry_after), RETRY_AFTER_CAP)
        if self.timeout is not None:
            delay = min(delay, max(0.0, self.timeout - self.seconds))
        self.log.info(
            f"{self._logged_as}_retry", error=_describe(error), delay=round(delay, 3), **context
        )
        await anyio.sleep(delay)

    def delays(self) -> Iterator[float]:
        """A fresh :func:`backoff` with this outage's ``initial`` and ``cap``."""
        return backoff(self.initial, self.cap)

    async def call(
        self,
        command: Callable[[], Awaitable[T]],
        *,
        outage: Callable[[BaseException], bool] = is_outage,
        on_outage: Callable[[BaseException], Awaitable[None]] | None = None,
    ) -> T:
        """Run ``command()`` until it succeeds; wait out the errors ``outage`` says are one.

        Any other error is raised at once (a failure), as is
        :class:`OutageExpired`. ``on_outage(error)`` runs after each outage
        error, before the wait (to recreate what the engine lost, say).
        """
        delays = self.delays()
        while True:
            try:
                result = await command()
            except Exception as exc:
                if not outage(exc):
                    raise
                if on_outage is not None:
                    await on_outage(exc)
                await self.wait(exc, delays)
            else:
                self.recovered()
                return result
