"""Redis errors under the outage rule (:mod:`wsroute.outage`): unavailable, or refused.

Unavailable — the ``redis`` sink waits it out and sends the same entries again;
the ``redis-stream`` source waits out every error anyway: a connection error or
timeout (the server is down, restarting, unreachable), and the replies a
server sends while it cannot serve writes for a while: ``LOADING`` (reading
its AOF or RDB after a restart), ``TRYAGAIN``, ``CLUSTERDOWN``,
``MASTERDOWN``, ``READONLY`` (a replica during a failover), ``NOREPLICAS``.
Anything else Redis answers (``WRONGTYPE``, an ``ERR`` of a command) refused
that message: a failure.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wsroute import Unavailable
from wsroute.outage import is_outage

from .batcher import PipelineError

__all__ = ["OUTAGE_REPLIES", "is_redis_outage", "unavailable"]

#: Error replies that mean "not now", not "not this".
OUTAGE_REPLIES = ("LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "NOREPLICAS")


def is_redis_outage(error: BaseException) -> bool:
    """Whether ``error`` (raised, or a command's reply) means Redis is unavailable."""
    if isinstance(error, PipelineError) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, RedisConnectionError | RedisTimeoutError):
        return True  # BusyLoadingError (LOADING) is a ConnectionError too
    if isinstance(error, ReadOnlyError):
        return True  # READONLY, whose class drops the word from its message
    if isinstance(error, ResponseError):
        return str(error).startswith(OUTAGE_REPLIES)
    if isinstance(error, RedisError):
        return False
    return is_outage(error)


def unavailable(error: BaseException) -> BaseException:
    """``error`` as the sink reports it: :class:`~wsroute.Unavailable` for an outage."""
    if isinstance(error, Unavailable) or not is_redis_outage(error):
        return error
    text = str(error)
    outage = Unavailable(f"{type(error).__name__}: {text}" if text else type(error).__name__)
    outage.__cause__ = error
    return outage
