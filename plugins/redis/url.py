"""A Redis URL, checked when the options are: what the client would refuse at start.

Invariant: a URL :func:`check_redis_url` accepts is one redis-py parses
(scheme, host, port, database, query options), so ``wsroute check`` refuses
what ``wsroute run`` would otherwise refuse only when the plugin starts. The
messages never show the URL's credentials.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from wsroute.net import check_url

__all__ = ["SCHEMES", "check_redis_url"]

SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str) -> None:
    """``ValueError`` at ``url`` for a URL the Redis client cannot use."""
    check_url(url, SCHEMES, needs_host=not url.startswith("unix:"))
    try:
        # Parses the URL and its query options; opens nothing.
        aioredis.ConnectionPool.from_url(url)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"url: {exc}") from None
