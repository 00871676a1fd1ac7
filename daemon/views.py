"""What ``wsroute status`` and ``wsroute top`` show: the ``/status`` document as rich tables.

One line per connection and per handler, with what goes wrong drawn in red
(a connection not connected, a queue over 80 %, lost messages, a failed
reload) and listed again in words under the tables, so that it also stands out
in plain text (stdout not a terminal, no colours). ``top`` adds rates per
second, computed from two successive reads (:func:`rates`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["QUEUE_ALERT", "Rates", "Sample", "problems", "rates", "status_view"]

QUEUE_ALERT = 0.8  # a queue fuller than this is a problem
BAD = "bold red"
WARN = "yellow"
DIM = "dim"


@dataclass(frozen=True)
class Sample:
    """One ``/status`` read and when it was taken (``time.monotonic()``)."""

    status: Mapping[str, Any]
    at: float


@dataclass
class Rates:
    """Per second, between two reads: frames per connection, outcomes per handler."""

    frames: dict[str, float] = field(default_factory=dict)
    handled: dict[str, float] = field(default_factory=dict)
    dead_lettered: dict[str, float] = field(default_factory=dict)


def rates(previous: Sample | None, current: Sample) -> Rates | None:
    """The rates between ``previous`` and ``current``; ``None`` when there is nothing to
    compare (the first read, or another daemon: a different pid)."""
    if previous is None or previous.status.get("pid") != current.status.get("pid"):
        return None
    elapsed = current.at - previous.at
    if elapsed <= 0:
        return None

    def per_second(group: str, name: str, key: str) -> float:
        now = current.status.get(group, {}).get(name, {}).get(key)
        before = previous.status.get(group, {}).get(name, {}).get(key)
        if not isinstance(now, int | float) or not isinstance(before, int | float):
            return 0.0
        return max(0.0, (now - before) / elapsed)

    result = Rates()
    for name in current.status.get("connections", {}):
        result.frames[name] = per_second("connections", name, "frames")
    for name in current.status.get("handlers", {}):
        result.handled[name] = per_second("handlers", name, "handled")
        result.dead_lettered[name] = per_second("handlers", name, "dead_lettered")
    return result


def problems(status: Mapping[str, Any]) -> list[str]:
    """What an operator should look at, one sentence each; empty when all is well."""
    found: list[str] = []
    if status.get("reload_failed"):
        found.append("the last reload failed: the daemon runs the config it had before")
    for name, conn in status.get("connections", {}).items():
        state = conn.get("state")
        if state != "connected":
            what = f"connection {name} is {state}"
            if conn.get("outage_seconds") is not None:
                what += f" (for {duration(conn['outage_seconds'])})"
            elif not conn.get("connected_since"):
                what += " (never connected)"
            if conn.get("last_error"):
                what += f": {conn['last_error']}"
            found.append(what)
        if conn.get("decode_errors"):
            what = f"connection {name}: {conn['decode_errors']:,} frames the codec refused"
            if conn.get("last_decode_error"):
                what += f", the last: {one_line(conn['last_decode_error'])}"
            found.append(what + " (dead-lettered)")
    for name, handler in status.get("handlers", {}).items():
        if not handler.get("started", True):
            found.append(f"handler {name} has not started")
        if handler.get("outage"):
            what = f"handler {name}'s engine is unavailable"
            since = handler.get("outage_since")
            if isinstance(since, int | float):
                what += f" (for {duration(max(0.0, time.time() - since))})"
            if handler.get("outage_error"):
                what += f": {handler['outage_error']}"
            found.append(what + "; its messages are held, not failed")
        fill = _fill(handler)
        if fill is not None and fill > QUEUE_ALERT:
            found.append(f"handler {name}'s queue is {fill:.0%} full")
        if handler.get("lost"):
            found.append(f"handler {name} lost {handler['lost']:,} messages")
    return found


def status_view(
    status: Mapping[str, Any],
    *,
    now: float | None = None,
    per_second: Rates | None = None,
    show_rates: bool = False,
    plain: bool = False,
) -> RenderableType:
    """The whole view: a header line, connections, handlers, sources, problems.

    ``show_rates`` adds the rate columns (``top``), blank until ``per_second`` is
    known. ``plain`` draws the tables without borders, for text that goes to a
    file or a pipe.
    """
    now = time.time() if now is None else now
    style = box.SIMPLE_HEAD if not plain else None
    gap = Text("")
    parts: list[RenderableType] = [_header(status, now), gap]
    parts.append(_connections(status, now, per_second, show_rates, style))
    parts += [gap, _handlers(status, per_second, show_rates, style)]
    if status.get("sources"):
        parts += [gap, _sources(status, style)]
    memory = status.get("memory")
    if memory:
        line = f"memory: {size(memory.get('queued_bytes', 0))} queued"
        if memory.get("budget"):
            line += f" of a {size(memory['budget'])} budget"
        line += f", {memory.get('pauses', 0):,} pauses"
        parts += [gap, Text(line, style=DIM)]
    found = problems(status)
    if found:
        parts += [gap, Text("problems:", style=BAD)]
        parts.extend(Text(f"  ! {p}", style=BAD) for p in found)
    return Group(*parts)


def _header(status: Mapping[str, Any], now: float) -> Text:
    text = Text()
    text.append(f"wsroute {status.get('version', '?')}", style="bold")
    text.append(f"  pid {status.get('pid', '?')}")
    started = status.get("started_at")
    if isinstance(started, int | float):
        text.append(f"  up {duration(now - started)}")
    if status.get("config"):
        text.append(f"  config {status['config']}")
    reloads = status.get("reloads") or {}
    if reloads:
        text.append(f"  reloads {reloads.get('success', 0)} ok, {reloads.get('failure', 0)} failed")
    if status.get("reload_failed"):
        text.append("  LAST RELOAD FAILED", style=BAD)
    return text


def _table(title: str, style: box.Box | None) -> Table:
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=style,
        show_edge=False,
        pad_edge=False,
        header_style="bold",
    )


def _connections(
    status: Mapping[str, Any],
    now: float,
    per_second: Rates | None,
    show_rates: bool,
    style: box.Box | None,
) -> Table:
    table = _table("connections", style)
    table.add_column("connection", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("since/outage", no_wrap=True)
    table.add_column("last frame", justify="right", no_wrap=True)
    table.add_column("frames", justify="right", no_wrap=True)
    if show_rates:
        table.add_column("frames/s", justify="right", no_wrap=True)
    table.add_column("reconnects", justify="right", no_wrap=True)
    table.add_column("decode errors", justify="right", no_wrap=True)
    table.add_column("unmatched", justify="right", no_wrap=True)
    table.add_column("last error")
    connections = status.get("connections", {})
    for name, conn in connections.items():
        up = conn.get("state") == "connected"
        since: Text
        if up and conn.get("connected_since"):
            since = Text(f"up {duration(now - conn['connected_since'])}")
        elif conn.get("outage_seconds") is not None:
            since = Text(f"down {duration(conn['outage_seconds'])}", style=BAD)
        else:
            since = Text("never up" if not up else "-", style=BAD if not up else "")
        last = conn.get("last_frame_at")
        row: list[RenderableType] = [
            Text(name, style="" if up else BAD),
            Text(str(conn.get("state", "?")), style="green" if up else BAD),
            since,
            Text(f"{duration(now - last)} ago" if last else "-"),
            Text(count(conn.get("frames"))),
        ]
        if show_rates:
            row.append(Text(rate(per_second.frames.get(name) if per_second else None)))
        reconnects = conn.get("reconnects") or 0
        row.append(Text(count(reconnects), style=WARN if reconnects else ""))
        row.append(_counter(conn.get("decode_errors"), WARN))
        row.append(_counter(conn.get("unmatched"), ""))
        error, at = last_error(conn)
        if error and at is not None:
            error += f" ({duration(max(0.0, now - at))} ago)"
        row.append(Text(error or "-", style=(BAD if not up else WARN) if error else DIM))
        table.add_row(*row)
    if not connections:
        table.add_row(Text("(none)", style=DIM))
    return table


def _handlers(
    status: Mapping[str, Any],
    per_second: Rates | None,
    show_rates: bool,
    style: box.Box | None,
) -> Table:
    table = _table("handlers", style)
    table.add_column("handler", no_wrap=True)
    table.add_column("queue", justify="right", no_wrap=True)
    table.add_column("%", justify="right", no_wrap=True)
    table.add_column("in flight", justify="right", no_wrap=True)
    table.add_column("handled", justify="right", no_wrap=True)
    if show_rates:
        table.add_column("handled/s", justify="right", no_wrap=True)
    table.add_column("dead-lettered", justify="right", no_wrap=True)
    if show_rates:
        table.add_column("dead/s", justify="right", no_wrap=True)
    for column in ("dropped", "lost", "retries", "timeouts"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("outage", justify="right", no_wrap=True)
    handlers = status.get("handlers", {})
    for name, h in handlers.items():
        fill = _fill(h)
        full = fill is not None and fill > QUEUE_ALERT
        started = h.get("started", True)
        label = Text(name, style=BAD if not started else "")
        if not started:
            label.append(" (not started)", style=BAD)
        row: list[RenderableType] = [
            label,
            Text(
                f"{count(h.get('queue_depth'))}/{count(h.get('queue_capacity'))}",
                style=BAD if full else "",
            ),
            Text("-" if fill is None else f"{fill:.0%}", style=BAD if full else ""),
            Text(count(h.get("in_flight"))),
            Text(count(h.get("handled"))),
        ]
        if show_rates:
            row.append(Text(rate(per_second.handled.get(name) if per_second else None)))
        row.append(_counter(h.get("dead_lettered"), WARN))
        if show_rates:
            dead = per_second.dead_lettered.get(name) if per_second else None
            row.append(Text(rate(dead), style=WARN if dead else ""))
        row.append(_counter(h.get("dropped"), WARN))
        row.append(_counter(h.get("lost"), BAD))
        row.append(_counter(h.get("retries"), WARN))
        row.append(_counter(h.get("timeouts"), WARN))
        since = h.get("outage_since")
        if h.get("outage") and isinstance(since, int | float):
            row.append(Text(duration(max(0.0, time.time() - since)), style=BAD))
        else:
            row.append(Text("-", style=DIM))
        table.add_row(*row)
    if not handlers:
        table.add_row(Text("(none)", style=DIM))
    return table


def _sources(status: Mapping[str, Any], style: box.Box | None) -> Table:
    table = _table("sources", style)
    table.add_column("source", no_wrap=True)
    for column in ("delivered", "settled", "in flight"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, source in status.get("sources", {}).items():
        table.add_row(
            name,
            count(source.get("delivered")),
            count(source.get("settled")),
            count(source.get("in_flight")),
        )
    return table


def last_error(conn: Mapping[str, Any]) -> tuple[str, float | None]:
    """A connection's newest error and when it happened: why its last session or
    attempt ended, or the codec's reason for the last refused frame."""
    session = conn.get("last_error") or ""
    if session and conn.get("last_close_code") is not None and "code=" not in session:
        session += f" (code {conn['last_close_code']})"
    session_at = conn.get("last_error_at")
    decode = conn.get("last_decode_error")
    decode_at = conn.get("last_decode_error_at")
    if decode and (not session or (decode_at or 0) >= (session_at or 0)):
        return one_line(f"decode_error: {decode}"), decode_at
    return one_line(session), session_at


def one_line(text: str) -> str:
    """An error message as one line of a table (a codec's message may hold newlines)."""
    return " ".join(text.split())


def _counter(value: Any, alert: str) -> Text:
    return Text(count(value), style=alert if value else "")


def _fill(handler: Mapping[str, Any]) -> float | None:
    depth, capacity = handler.get("queue_depth"), handler.get("queue_capacity")
    if not isinstance(depth, int | float) or not isinstance(capacity, int | float) or capacity <= 0:
        return None
    return float(depth) / capacity


def count(value: Any) -> str:
    """``10,234``; ``-`` for a missing figure."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:,}"


def rate(value: float | None) -> str:
    """``12.5/s``, ``1,234/s``; blank before a second read."""
    if value is None:
        return ""
    if value >= 100:
        return f"{value:,.0f}/s"
    return f"{value:.1f}/s"


def duration(seconds: float) -> str:
    """``0.4s``, ``42s``, ``5m02s``, ``3h07m``, ``2d04h``."""
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def size(n: Any) -> str:
    """Bytes as ``512 B``, ``1.5 KiB``, ``64.0 MiB``."""
    if not isinstance(n, int | float):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover
