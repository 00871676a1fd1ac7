"""The ``redis-stream`` source's Redis commands: retried through outages, the group kept alive.

:class:`GroupCommands` runs every command a consumer of the group sends
(``XREADGROUP``, ``XAUTOCLAIM``, ``XPENDING``, ``XACK``, ``XCLAIM``) through
:meth:`GroupCommands.call`; :func:`stream_entries` and :func:`autoclaim_reply`
read the replies, in RESP2 or RESP3.

Invariants:

- :meth:`GroupCommands.call` never raises a Redis error or ``OSError``: a
  worker waits Redis out with the outage helper (:class:`wsroute.Outage`:
  capped, jittered exponential backoff, forever), which logs
  ``redis_unavailable`` once per outage and ``redis_recovered`` with its
  length. A refusal (``WRONGTYPE``) is waited out too: a source has no dead
  letter for a command, and the operator sees the error in the log.
- A group that vanished (``NOGROUP``: Redis restarted empty, the stream or
  group was deleted; ``UNBLOCKED``: the stream of a blocked read was deleted)
  is recreated with ``XGROUP CREATE ... MKSTREAM`` at ``create_group``'s start,
  loudly, by one caller at a time; with ``create_group = "no"`` it is waited
  for instead. Every such failure counts in ``stats.redis_errors``.
- A trimmed pending entry comes back with ``None`` fields, never dropped here:
  the source decides what losing it means.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError
from structlog.typing import FilteringBoundLogger

from wsroute import Outage

if TYPE_CHECKING:
    from .source import StreamStats

__all__ = [
    "Entries",
    "GroupCommands",
    "autoclaim_reply",
    "describe",
    "raw_reply",
    "stream_entries",
]

T = TypeVar("T")

#: Entries as read from Redis: ``(id, fields)``; ``fields`` is ``None`` for an
#: entry trimmed out of the stream while it was pending.
Entries = list[tuple[str, dict[bytes, bytes] | None]]

# Reconnect backoff: from _RETRY_INITIAL doubling up to _RETRY_MAX, each delay
# jittered down by up to half so that workers restarted together spread out.
_RETRY_INITIAL = 0.2
_RETRY_MAX = 10.0


class GroupCommands:
    """One consumer group's commands on one stream, retried until they succeed."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        stream: str,
        group: str,
        create_group: str,
        stats: StreamStats,
        log: FilteringBoundLogger,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.create_group_at = create_group  # "oldest", "newest" or "no"
        self.stats = stats
        self.log = log
        self._group_lock: anyio.Lock | None = None
        #: Redis as this consumer sees it: its outage state, waits and log events.
        self.outage = Outage("redis", log, initial=_RETRY_INITIAL, cap=_RETRY_MAX)

    async def create_group(self) -> bool:
        """XGROUP CREATE ... MKSTREAM; ``False`` when it exists already."""
        start = "0" if self.create_group_at == "oldest" else "$"
        try:
            await self.client.xgroup_create(self.stream, self.group, id=start, mkstream=True)
        except ResponseError as exc:
            if str(exc).startswith("BUSYGROUP"):
                return False
            raise
        return True

    async def call(self, op: str, command: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis command until it succeeds: outages back off, a lost group is recreated.

        Never raises a Redis error: a worker waits out Redis, it does not crash on it.
        """
        outage = self.outage
        delays = outage.delays()
        while True:
            try:
                result = await command()
            except ResponseError as exc:
                self.stats.redis_errors += 1
                if _group_missing(exc):
                    await self._recover_group(op, exc)
                    await anyio.sleep(next(delays))
                    continue
                await outage.wait(exc, delays, op=op)
            except (RedisError, OSError) as exc:
                self.stats.redis_errors += 1
                await outage.wait(exc, delays, op=op)
            else:
                if outage.active:
                    outage.recovered(op=op)
                return result

    async def _recover_group(self, op: str, exc: Exception) -> None:
        """The group (or the whole stream) is gone: Redis restarted empty, or someone deleted it."""
        if self._group_lock is None:
            self._group_lock = anyio.Lock()
        async with self._group_lock:
            if self.create_group_at == "no":
                self.log.error(
                    "group_missing",
                    op=op,
                    error=describe(exc),
                    note="create_group is no: create it with XGROUP CREATE; retrying",
                )
                return
            try:
                created = await self.create_group()
            except (RedisError, OSError) as create_error:
                self.log.warning("group_create_failed", error=describe(create_error))
                return
            if created:
                self.stats.groups_recreated += 1
                self.log.error(
                    "group_recreated",
                    op=op,
                    error=describe(exc),
                    start=self.create_group_at,
                    note="the consumer group had vanished (Redis restarted empty, or the "
                    "stream or group was deleted); entries may be delivered again"
                    + ("" if self.create_group_at == "oldest" else " or skipped"),
                )


# -- replies -----------------------------------------------------------------


def raw_reply(response: Any, **options: Any) -> Any:
    """A redis-py response callback that keeps the reply as Redis sent it."""
    return response


def stream_entries(reply: Any) -> Entries:
    """XREADGROUP's reply for one stream as ``[(id, fields)]``; ``fields`` ``None``: trimmed.

    RESP2 replies ``[[stream, entries]]``, RESP3 ``{stream: [entries]}``; each
    entry's fields as redis-py parses them (a dict) or as Redis sent them (a
    flat list: :func:`raw_reply`).
    """
    if not reply:
        return []
    if isinstance(reply, dict):
        # redis-py wraps each stream's entries in a list of their own; Redis does not.
        groups = [v[0] if _wrapped(v) else v for v in reply.values()]
    else:
        groups = [item[1] for item in reply]
    if len(groups) == 1:
        return _entries(groups[0])
    return [entry for entries in groups for entry in _entries(entries)]


def _wrapped(value: Any) -> bool:
    """``[[entry, ...]]`` rather than ``[entry, ...]`` (an entry is ``[id, fields]``)."""
    if not value or not isinstance(value[0], list):
        return False
    first = value[0]
    return not first or isinstance(first[0], list | tuple)


def autoclaim_reply(reply: Any) -> tuple[str, Entries, list[str]]:
    """XAUTOCLAIM's reply: next cursor, claimed entries, IDs gone from the stream (Redis >= 7)."""
    cursor = _id(reply[0])
    claimed = _entries(reply[1])
    deleted = [_id(i) for i in reply[2]] if len(reply) > 2 and reply[2] else []
    return cursor, claimed, deleted


def describe(error: BaseException) -> str:
    """An error for the logs: its type, and its text when it has one."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _entries(items: Iterable[Any]) -> Entries:
    entries: Entries = []
    append = entries.append
    for item in items:
        if item is None:
            continue
        entry_id, fields = item[0], item[1]
        if fields.__class__ is list:  # an unparsed field list: name, value, name, ...
            pairs = iter(fields)
            fields = dict(zip(pairs, pairs, strict=False))  # Redis sends pairs
        append(
            (entry_id.decode("ascii") if entry_id.__class__ is bytes else entry_id, fields or None)
        )
    return entries


def _id(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def _group_missing(exc: ResponseError) -> bool:
    # NOGROUP: no such key or group. UNBLOCKED: a blocked XREADGROUP's stream was deleted.
    text = str(exc)
    return text.startswith(("NOGROUP", "UNBLOCKED"))
