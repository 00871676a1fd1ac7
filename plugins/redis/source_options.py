"""The ``redis-stream`` source's options and counters.

The options are :class:`StreamSourceOptions` (``RedisStreamSource.Options``, what
``wsroute plugins`` lists); ``reclaim = {...}`` is :mod:`.reclaim`'s. The counters
(:class:`StreamStats`) are shared by the reader, the delivery and the ledger and
logged as ``source_totals`` at close.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Literal

from wsroute import Duration

from .reclaim import ReclaimOptions
from .url import check_redis_url

__all__ = ["ReadOptions", "StreamSourceOptions", "StreamStats", "default_consumer"]


def default_consumer() -> str:
    """``<hostname>:<instance>``: ``$WSROUTE_INSTANCE`` (set it per systemd instance), else 1."""
    return f"{socket.gethostname()}:{os.environ.get('WSROUTE_INSTANCE') or '1'}"


@dataclass
class ReadOptions:
    """``read = { count, block }``: how new entries are fetched."""

    count: int = field(default=100, metadata={"doc": "Entries fetched per XREADGROUP (at most)."})
    block: Duration = field(
        default=Duration(1.0),
        metadata={"doc": "How long one XREADGROUP waits for new entries (BLOCK)."},
    )

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"read.count must be at least 1, got {self.count}")
        if self.block < 0.001:
            # BLOCK 0 means "forever" to Redis: shutdown and outages would go unnoticed.
            raise ValueError(f"read.block must be at least 1ms, got {self.block:g}s")


@dataclass
class StreamStats:
    """The source's counters; :attr:`RedisStreamSource.stats`, logged as ``source_totals``."""

    read: int = 0  # entries taken from Redis: new, own pending and reclaimed
    recovered: int = 0  # of those, this consumer's own pending entries re-read at start
    reclaimed: int = 0  # of those, idle entries taken over with XAUTOCLAIM
    delivered: int = 0  # routed (ctx.deliver)
    dead_lettered: int = 0  # sent to the dead-letter handler: decode_error, max_deliveries
    acked: int = 0  # IDs acknowledged with XACK
    trimmed_unprocessed: int = 0  # pending entries found trimmed away: data loss
    groups_recreated: int = 0
    redis_errors: int = 0  # failed commands (each retried)


@dataclass
class StreamSourceOptions:
    # No docstring: the schema would describe the table with it (the dataclass's own is skipped).
    stream: str = field(
        metadata={"doc": 'The stream key, e.g. "{ticks}:in" (braces: a Cluster hash tag).'}
    )
    url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata={"doc": "redis:// or rediss:// URL (password, database number)."},
    )
    group: str = field(default="wsroute", metadata={"doc": "The consumer group."})
    consumer: str = field(
        default="",
        metadata={
            "doc": "This worker's name in the group: unique per live process, the same "
            "after a restart (empty: <hostname>:<$WSROUTE_INSTANCE or 1>)."
        },
    )
    create_group: Literal["oldest", "newest", "no"] = field(
        default="oldest",
        metadata={
            "doc": "Create a missing group (and stream) starting at the oldest entry, "
            "at new entries only, or not at all (wait for it, logging errors)."
        },
    )
    read: ReadOptions = field(default_factory=ReadOptions, metadata={"doc": "{ count, block }"})
    reclaim: ReclaimOptions = field(
        default_factory=ReclaimOptions, metadata={"doc": "{ min_idle, every, count }"}
    )
    lease: bool = field(
        default=True,
        metadata={
            "doc": "Renew in-flight entries every reclaim.min_idle / 3 so other workers "
            "do not take them from a slow handler (off: such an entry is handled twice)."
        },
    )
    max_deliveries: int = field(
        default=0,
        metadata={
            "doc": "Dead-letter an entry delivered more often than this without being "
            "acknowledged (it crashes or hangs the process); 0: never. Needs a "
            "dead-letter handler."
        },
    )
    max_in_flight: int = field(
        default=1000,
        metadata={"doc": "Entries read and not yet settled, at most (backpressure)."},
    )

    def __post_init__(self) -> None:
        for name in ("stream", "group"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            # Only the scheme: the rest of the URL may hold a password.
            scheme = self.url.partition(":")[0]
            raise ValueError(f"url must be redis://, rediss:// or unix://, not {scheme!r}")
        check_redis_url(self.url)
        if self.max_deliveries < 0:
            raise ValueError(f"max_deliveries must not be negative, got {self.max_deliveries}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {self.max_in_flight}")
