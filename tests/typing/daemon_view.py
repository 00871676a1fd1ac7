"""Type-checked (mypy --strict, which reports an unused ``type: ignore``), never run: an
observer of the running daemon sees only its read-only view.

Each ignore below must stay needed: if the view ever let an observer reach the
owner's state (the dispatcher, the task group, a writable runner table), mypy
would report the ignore as unused and ``make typecheck`` would fail.
"""

from __future__ import annotations

from wsroute.view import DaemonView


def observe(daemon: DaemonView) -> int:
    figures = len(daemon.runners) + len(daemon.connections) + daemon.unmatched.get("a", 0)
    daemon.set_tap(None)  # the one change an observer may make
    daemon.dispatcher.tap = None  # type: ignore[attr-defined]
    daemon.shutdown()  # type: ignore[attr-defined]
    daemon.runners["x"] = daemon.runners["y"]  # type: ignore[index]
    daemon.config = daemon.config  # type: ignore[misc]
    return figures
