"""What a running daemon looks like right now: /status, /metrics, /ready and STATUS=.

Everything here reads the daemon through its read-only
:class:`~wsroute.view.DaemonView`.

Read at request time from the counters the delivery layer keeps anyway —
nothing here runs per frame. Invariants: counters are monotonic over the
daemon's life (a handler a reload replaced adds its counts to its
successor's: :attr:`~wsroute.view.DaemonView.retiring` while it drains,
:attr:`~wsroute.view.DaemonView.retired` after), and per handler ``received =
handled + dead_lettered + dropped + released + in_flight`` at every read,
since each runner's own identity holds. Error texts pass the log's secret
masking: they can quote what an upstream echoed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

from . import __version__
from .connection import ConnectionState
from .handler import HandlerRunner, HandlerStats
from .logging import mask_secrets

if TYPE_CHECKING:
    from .view import DaemonView

__all__ = ["add_stats", "handler_counts", "outage_state", "readiness", "status", "status_line"]

_COUNTERS = [f.name for f in dataclasses.fields(HandlerStats)]


def status(daemon: DaemonView) -> dict[str, Any]:
    """The ``/status`` document (docs/observability.md has its shape)."""
    now = time.time()
    unmatched = daemon.unmatched
    connections: dict[str, Any] = {}
    for name, conn in daemon.connections.items():
        stats = conn.stats
        up = conn.state is ConnectionState.CONNECTED
        outage = None
        if not up and stats.disconnected_at:
            outage = round(now - stats.disconnected_at, 3)
        connections[name] = {
            "state": conn.state.value,
            "url": conn.url_for_logs,
            "connected_since": stats.connected_since or None,
            "last_frame_at": stats.last_frame_at or None,
            "frames": conn.seq,
            "decode_errors": stats.decode_errors,
            "unmatched": unmatched[name],
            "reconnects": stats.reconnects,
            "failed_attempts": stats.failed_attempts,
            "last_error": mask_secrets(stats.last_error) if stats.last_error else None,
            "last_error_at": stats.last_error_at or None,
            "last_close_code": stats.last_close_code,
            "last_decode_error": (
                mask_secrets(stats.last_decode_error) if stats.last_decode_error else None
            ),
            "last_decode_error_at": stats.last_decode_error_at or None,
            "outage_seconds": outage,
        }
    handlers: dict[str, Any] = {}
    for name, runner in daemon.runners.items():
        counts = handler_counts(daemon, name)
        handlers[name] = {
            "plugin": runner.plugin,
            "started": runner.started,
            "queue_depth": runner.queued,
            "queue_capacity": runner.section.queue,
            "queued_bytes": runner.queued_bytes,
            "queue_bytes_capacity": runner.section.queue_bytes,
            **counts,
            **outage_state(runner),
        }
    sources: dict[str, Any] = {}
    for name, source in daemon.sources.items():
        ctx = source.ctx
        sources[name] = {
            "delivered": ctx.delivered,
            "settled": ctx.settled,
            "in_flight": ctx.in_flight,
            "decode_errors": daemon.decode_errors[name],
            "unmatched": unmatched[name],
        }
    budget = daemon.budget
    return {
        "version": __version__,
        "pid": os.getpid(),
        "started_at": daemon.started_at,
        "config": daemon.config.path,
        "config_loaded_at": daemon.config_loaded_at,
        "reload_failed": daemon.reload_failed,
        "reloads": dict(daemon.reloads),
        "connections": connections,
        "handlers": handlers,
        "sources": sources,
        "memory": {
            "queued_bytes": budget.total,
            "budget": budget.limit,
            "pauses": budget.pauses,
        },
    }


def outage_state(runner: HandlerRunner) -> dict[str, Any]:
    """The handler's engine outage: ``outage`` (1 during one), since when (Unix time), its
    first error, and the seconds spent in outages since the handler started."""
    outage = runner.outage
    since = None
    if outage.since is not None:
        since = round(time.time() - outage.seconds, 3)
    return {
        "outage": int(outage.active),
        "outage_since": since,
        "outage_error": mask_secrets(outage.error) if outage.active and outage.error else None,
        "outage_seconds_total": round(outage.seconds_total, 3),
        "outages": outage.count + int(outage.active),
    }


def handler_counts(daemon: DaemonView, name: str) -> dict[str, int]:
    """One handler's counters over the daemon's life, ``in_flight`` included.

    The running runner's, plus those of runners a reload replaced under the same
    name (still draining, or finished).
    """
    runners: list[HandlerRunner] = [r for r in daemon.retiring if r.name == name]
    current = daemon.runners.get(name)
    if current is not None:
        runners.append(current)
    counts = dict.fromkeys(_COUNTERS, 0)
    retired = daemon.retired.get(name)
    if retired is not None:
        for counter in _COUNTERS:
            counts[counter] += getattr(retired, counter)
    in_flight = 0
    for runner in runners:
        for counter in _COUNTERS:
            counts[counter] += getattr(runner.stats, counter)
        in_flight += runner.in_flight
    counts["in_flight"] = in_flight
    return counts


def readiness(daemon: DaemonView) -> tuple[bool, dict[str, Any]]:
    """``/ready``: every connection connected and every handler started."""
    down = sorted(
        name
        for name, conn in daemon.connections.items()
        if conn.state is not ConnectionState.CONNECTED
    )
    not_started = sorted(name for name, runner in daemon.runners.items() if not runner.started)
    ready = not down and not not_started
    body: dict[str, Any] = {"ready": ready}
    if not ready:
        body["connections_down"] = down
        body["handlers_not_started"] = not_started
    return ready, body


def status_line(daemon: DaemonView) -> str:
    """One line for systemd's STATUS=: connection states and delivery counters."""
    states: dict[str, int] = {}
    for conn in daemon.connections.values():
        states[conn.state.value] = states.get(conn.state.value, 0) + 1
    up = states.get(ConnectionState.CONNECTED.value, 0)
    frames = sum(c.seq for c in daemon.connections.values())
    runners = daemon.runners.values()
    # Over the daemon's life, as /metrics: a handler a reload replaced or removed
    # still counts (the line must never go backwards).
    names = {*daemon.runners, *daemon.retired, *(r.name for r in daemon.retiring)}
    totals = [handler_counts(daemon, name) for name in names]
    handled = sum(t["handled"] for t in totals)
    # Undecodable frames are dead-lettered by the dispatcher, not by a handler.
    dead = sum(t["dead_lettered"] for t in totals) + sum(daemon.decode_errors.values())
    dropped = sum(t["dropped"] for t in totals)
    queued = sum(r.queued for r in runners)
    return ("reload failed; " if daemon.reload_failed else "") + (
        f"{up}/{len(daemon.connections)} connected; frames={frames} handled={handled} "
        f"dead_lettered={dead} dropped={dropped} queued={queued}"
    )


def add_stats(total: HandlerStats | None, more: HandlerStats) -> HandlerStats:
    """``total`` plus ``more``, counter by counter (a new object)."""
    if total is None:
        return dataclasses.replace(more)
    return HandlerStats(
        **{f.name: getattr(total, f.name) + getattr(more, f.name) for f in dataclasses.fields(more)}
    )
