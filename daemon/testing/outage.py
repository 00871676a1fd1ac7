"""A sink's outage end to end: handled, target down, held, target back, all handled.

Invariant: :func:`run_outage` drives a running :class:`~wsroute.testing.Daemon`
through exactly three messages and three phases, each bounded by its
``timeout``; it fails with an ``AssertionError`` naming the phase and the
counters, and otherwise returns every phase's counters in an :class:`Outage`.
It never takes the upstream down, only the sink's target.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from .daemon import Daemon
from .waiting import wait_until


@dataclass
class Outage:
    """What :func:`run_outage` saw: the handler's counters (:meth:`Daemon.stats`) per phase."""

    up: dict[str, int]
    """After the first message was handled, the target up."""
    down: dict[str, int]
    """The target down: after the handler began holding the second message (its
    ``outage`` is 1), or after it was dead-lettered (``held=False``)."""
    back: dict[str, int]
    """After the third message was handled, the target up again."""


def _tick(n: int) -> str:
    return json.dumps({"type": "tick", "n": n})


async def _call(action: Callable[[], object]) -> None:
    # A coroutine function is awaited; a plain one (a server's blocking start())
    # runs in a worker thread, so the daemon keeps running meanwhile.
    if inspect.iscoroutinefunction(action):
        await action()
        return
    result = await anyio.to_thread.run_sync(action)
    if inspect.isawaitable(result):
        await result


async def run_outage(
    daemon: Daemon,
    handler: str,
    *,
    serve: Callable[[], contextlib.AbstractAsyncContextManager[object]] | None = None,
    stop: Callable[[], object] | None = None,
    start: Callable[[], object] | None = None,
    ready: Callable[[], object] | None = None,
    delivered: Callable[[], int] | None = None,
    frame: Callable[[int], bytes | str] = _tick,
    timeout: float = 15.0,
    held: bool = True,
) -> Outage:
    """A sink's outage, end to end: handled, target down, held, target back, handled.

    ``daemon`` runs with a :class:`ScriptedUpstream` whose messages are routed
    to ``[handlers.HANDLER]`` (and nowhere else that fails), with a
    ``[daemon] dead_letter`` handler and ``timeout``/``retries`` that give up
    within ``timeout`` seconds. The target is either ``serve``, an async
    context manager factory (the target is up inside it, down outside:
    ``ScriptedUpstream(port=...).serve``), or ``stop`` and ``start`` for one
    that is already running (plain functions run in a worker thread, coroutine
    functions are awaited). The phases, each bounded by ``timeout``:

    1. the target is brought up (``serve``), ``ready()`` is awaited if given;
       frame ``frame(1)`` is sent upstream and handled;
    2. the target goes down; ``frame(2)`` is held: the handler reports an
       outage (``handle()`` raised :class:`~wsroute.Unavailable`), nothing is
       handled or dead-lettered;
    3. the target comes back; ``frame(2)`` and ``frame(3)`` are handled.

    That is the outage rule every built-in sink follows (docs/plugins.md).
    ``held=False`` checks a handler whose target being down is a failure (an
    ``exec`` command that exits): ``frame(2)`` is dead-lettered in phase 2 and
    only ``frame(3)`` is handled in phase 3.

    ``frame(n)`` defaults to the JSON text ``{"type": "tick", "n": n}`` (for
    ``codec = "json"``). With ``delivered``, a count of what the target has
    received, it must follow: 1, still 1 during the outage, then 3 (2 with
    ``held=False``). Fails with
    an ``AssertionError`` naming the phase and the counters; returns the
    counters of each phase for the test's own checks (``failures``, say), and
    leaves the dead letters (what the dead-letter handler wrote) to the test.
    """
    if (serve is None) == (stop is None or start is None) or (serve and (stop or start)):
        raise TypeError("run_outage needs serve=, or both stop= and start=")
    upstream = daemon.upstream
    if upstream is None or not hasattr(upstream, "send"):
        raise TypeError("run_outage needs a daemon run with a ScriptedUpstream")

    def stats() -> dict[str, int]:
        return daemon.stats(handler)

    async def until(phase: str, what: str, predicate: Callable[[], object]) -> None:
        try:
            await wait_until(predicate, timeout)
        except TimeoutError:
            got = delivered() if delivered is not None else "-"
            raise AssertionError(
                f"outage of {handler!r}, {phase}: {what} not within {timeout}s "
                f"(stats {stats()}, delivered {got})"
            ) from None

    def handled(n: int) -> Callable[[], bool]:
        return lambda: stats()["handled"] == n and (delivered is None or delivered() == n)

    async with contextlib.AsyncExitStack() as serving:

        async def up() -> None:
            if serve is not None:
                await serving.enter_async_context(serve())
            else:
                assert start is not None
                await _call(start)

        async def down() -> None:
            if serve is not None:
                await serving.aclose()
            else:
                assert stop is not None
                await _call(stop)

        await until("start", "the upstream connected", lambda: upstream.connected >= 1)
        if serve is not None:
            await up()
        if ready is not None:
            await until("start", "ready()", ready)
        await upstream.send(frame(1))
        await until("target up", "message 1 handled", handled(1))
        first = stats()

        await down()
        await upstream.send(frame(2))
        if held:
            await until("target down", "message 2 held in an outage", lambda: stats()["outage"])
        else:
            await until(
                "target down", "message 2 dead-lettered", lambda: stats()["dead_lettered"] == 1
            )
        during = stats()
        assert during["handled"] == 1, f"handled during the outage of {handler!r}: {during}"
        if held:
            assert during["dead_lettered"] == 0, f"dead-lettered in an outage: {during}"
            assert during["in_flight"] == 1, f"message 2 not held in the outage: {during}"
        if delivered is not None:
            assert delivered() == 1, f"the target got message 2 while down: {delivered()}"

        await up()
        await upstream.send(frame(3))
        await until("target back", "messages handled", handled(3 if held else 2))
        after = stats()
        dead = 0 if held else 1
        assert after["dead_lettered"] == dead, f"dead-lettered after the outage: {after}"
    return Outage(up=first, down=during, back=after)
