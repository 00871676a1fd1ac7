"""``GET /metrics``: the Prometheus text format, read from the status snapshot at scrape time.

Invariant: nothing here runs per frame. :class:`StatusCollector` builds every
metric family from :func:`wsroute.snapshot.status` when a scrape asks for it,
so the counters are the ones ``/status`` shows (monotonic over the daemon's
life, across reloads), and the names are exactly :data:`METRIC_NAMES` — the
list docs/observability.md documents, which the tests and the dashboard check
against. Each :class:`Metrics` has its own ``CollectorRegistry`` (never the
global one) with the standard ``process_*`` metrics beside ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from ..snapshot import status
from .names import HANDLER_OUTCOMES, METRIC_NAMES

if TYPE_CHECKING:
    from ..view import DaemonView

__all__ = ["CONTENT_TYPE", "HANDLER_OUTCOMES", "METRIC_NAMES", "Metrics", "StatusCollector"]

#: The Content-Type of a ``/metrics`` answer.
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: The ``outcome`` label values of ``wsroute_handler_messages_total``.
_CONNECTION_COUNTERS = (
    ("wsroute_connection_frames_total", "frames", "Frames read from the upstream."),
    ("wsroute_connection_decode_errors_total", "decode_errors", "Frames the codec refused."),
    ("wsroute_connection_reconnects_total", "reconnects", "Reconnects after a lost session."),
    ("wsroute_unmatched_total", "unmatched", "Messages no route matched."),
)
_HANDLER_COUNTERS = (
    ("wsroute_handler_received_total", "received", "Messages offered to the handler."),
    ("wsroute_handler_retries_total", "retries", "Attempts retried after a failure."),
    ("wsroute_handler_timeouts_total", "timeouts", "Attempts that timed out."),
)
_HANDLER_GAUGES = (
    ("wsroute_handler_queue_depth", "queue_depth", "Messages queued now."),
    ("wsroute_handler_queue_capacity", "queue_capacity", "The queue's bound in messages."),
    ("wsroute_handler_queued_bytes", "queued_bytes", "Bytes queued now (estimated)."),
    ("wsroute_handler_in_flight", "in_flight", "Messages received and not settled yet."),
)
_HANDLER_OUTAGE = (
    ("wsroute_handler_outage", "outage", "1 while the handler's engine is unavailable."),
    (
        "wsroute_handler_outage_seconds_total",
        "outage_seconds_total",
        "Seconds the handler's engine was unavailable.",
    ),
)
_SOURCE_COUNTERS = (
    ("wsroute_source_delivered_total", "delivered", "Messages the source delivered."),
    ("wsroute_source_settled_total", "settled", "Delivered messages settled by every handler."),
)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class StatusCollector(Collector):
    """Yields wsroute's metric families from one status snapshot per scrape."""

    def __init__(self, service: DaemonView) -> None:
        self.service = service

    def describe(self) -> list[Metric]:
        # Nothing up front: the families are built from the running daemon at scrape time.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from families(status(self.service))


def families(snap: dict[str, Any]) -> Iterator[Metric]:
    """The metric families of one ``/status`` document, in :data:`METRIC_NAMES` order."""
    info = GaugeMetricFamily("wsroute_build_info", "wsroute's version.", labels=["version"])
    info.add_metric([str(snap.get("version", ""))], 1.0)
    yield info

    connections: dict[str, dict[str, Any]] = snap.get("connections") or {}
    up = GaugeMetricFamily(
        "wsroute_connection_up", "1 while the upstream is connected.", labels=["connection"]
    )
    for name, conn in connections.items():
        up.add_metric([name], 1.0 if conn.get("state") == "connected" else 0.0)
    yield up
    yield from _per(connections, "connection", _CONNECTION_COUNTERS[:3], CounterMetricFamily)
    last = GaugeMetricFamily(
        "wsroute_connection_last_frame_timestamp_seconds",
        "When the last frame was read (Unix time).",
        labels=["connection"],
    )
    for name, conn in connections.items():
        if conn.get("last_frame_at") is not None:
            last.add_metric([name], _number(conn["last_frame_at"]))
    yield last
    # Sources share the connection name space: their unmatched messages are here too.
    unmatched = dict(connections)
    for name, source in (snap.get("sources") or {}).items():
        unmatched.setdefault(name, source)
    yield from _per(unmatched, "connection", _CONNECTION_COUNTERS[3:], CounterMetricFamily)

    handlers: dict[str, dict[str, Any]] = snap.get("handlers") or {}
    yield from _per(handlers, "handler", _HANDLER_COUNTERS[:1], CounterMetricFamily)
    outcomes = CounterMetricFamily(
        "wsroute_handler_messages_total",
        "Messages settled, by outcome.",
        labels=["handler", "outcome"],
    )
    for name, counts in handlers.items():
        for outcome in HANDLER_OUTCOMES:
            outcomes.add_metric([name, outcome], _number(counts.get(outcome)))
    yield outcomes
    yield from _per(handlers, "handler", _HANDLER_GAUGES, GaugeMetricFamily)
    yield from _per(handlers, "handler", _HANDLER_COUNTERS[1:], CounterMetricFamily)
    yield from _per(handlers, "handler", _HANDLER_OUTAGE[:1], GaugeMetricFamily)
    yield from _per(handlers, "handler", _HANDLER_OUTAGE[1:], CounterMetricFamily)

    yield from _per(snap.get("sources") or {}, "source", _SOURCE_COUNTERS, CounterMetricFamily)

    memory: dict[str, Any] = snap.get("memory") or {}
    yield GaugeMetricFamily(
        "wsroute_memory_queued_bytes",
        "Bytes queued in all handlers (estimated).",
        value=_number(memory.get("queued_bytes")),
    )
    yield GaugeMetricFamily(
        "wsroute_memory_budget_bytes",
        "The daemon-wide memory_budget.",
        value=_number(memory.get("budget")),
    )
    reloads = CounterMetricFamily(
        "wsroute_config_reloads_total", "Config reloads, by result.", labels=["result"]
    )
    counts = snap.get("reloads") or {}
    for result in ("success", "failure"):
        reloads.add_metric([result], _number(counts.get(result)))
    yield reloads


def _per(
    items: dict[str, dict[str, Any]],
    label: str,
    specs: tuple[tuple[str, str, str], ...],
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
) -> Iterator[Metric]:
    for metric, field, text in specs:
        family = kind(metric, text, labels=[label])
        for name, values in items.items():
            family.add_metric([name], _number(values.get(field)))
        yield family


def render_text(snap: dict[str, Any]) -> str:
    """The text format of :func:`families` of ``snap``, written directly: the same
    families, samples and order, in a sixth of the time prometheus_client takes
    (its objects per sample cost ~25 ms a scrape with 200 handlers, all of it on
    the event loop; this is ~4 ms)."""
    return "".join(family_texts(snap))


def family_texts(snap: dict[str, Any]) -> Iterator[str]:
    """:func:`render_text` one family at a time, so that a scrape can let the event
    loop run between them."""

    def head(name: str, text: str, kind: str) -> str:
        return f"# HELP {name} {_escape_help(text)}\n# TYPE {name} {kind}\n"

    def per(
        items: dict[str, dict[str, Any]],
        label: str,
        specs: tuple[tuple[str, str, str], ...],
        kind: str,
    ) -> Iterator[str]:
        for metric, field, text in specs:
            lines = [head(metric, text, kind)]
            lines += [
                f'{metric}{{{label}="{_escape(key)}"}} {_float(values.get(field))}\n'
                for key, values in items.items()
            ]
            yield "".join(lines)

    version = _escape(str(snap.get("version", "")))
    yield head("wsroute_build_info", "wsroute's version.", "gauge") + (
        f'wsroute_build_info{{version="{version}"}} 1.0\n'
    )
    connections: dict[str, dict[str, Any]] = snap.get("connections") or {}
    lines = [head("wsroute_connection_up", "1 while the upstream is connected.", "gauge")]
    for name, conn in connections.items():
        state = "1.0" if conn.get("state") == "connected" else "0.0"
        lines.append(f'wsroute_connection_up{{connection="{_escape(name)}"}} {state}\n')
    yield "".join(lines)
    yield from per(connections, "connection", _CONNECTION_COUNTERS[:3], "counter")
    lines = [
        head(
            "wsroute_connection_last_frame_timestamp_seconds",
            "When the last frame was read (Unix time).",
            "gauge",
        )
    ]
    for name, conn in connections.items():
        if conn.get("last_frame_at") is not None:
            lines.append(
                "wsroute_connection_last_frame_timestamp_seconds"
                f'{{connection="{_escape(name)}"}} {_float(conn["last_frame_at"])}\n'
            )
    yield "".join(lines)
    unmatched = dict(connections)
    for name, source in (snap.get("sources") or {}).items():
        unmatched.setdefault(name, source)
    yield from per(unmatched, "connection", _CONNECTION_COUNTERS[3:], "counter")
    handlers: dict[str, dict[str, Any]] = snap.get("handlers") or {}
    yield from per(handlers, "handler", _HANDLER_COUNTERS[:1], "counter")
    lines = [head("wsroute_handler_messages_total", "Messages settled, by outcome.", "counter")]
    for name, counts in handlers.items():
        label = _escape(name)
        for outcome in HANDLER_OUTCOMES:
            lines.append(
                f'wsroute_handler_messages_total{{handler="{label}",outcome="{outcome}"}} '
                f"{_float(counts.get(outcome))}\n"
            )
    yield "".join(lines)
    yield from per(handlers, "handler", _HANDLER_GAUGES, "gauge")
    yield from per(handlers, "handler", _HANDLER_COUNTERS[1:], "counter")
    yield from per(handlers, "handler", _HANDLER_OUTAGE[:1], "gauge")
    yield from per(handlers, "handler", _HANDLER_OUTAGE[1:], "counter")
    yield from per(snap.get("sources") or {}, "source", _SOURCE_COUNTERS, "counter")
    memory: dict[str, Any] = snap.get("memory") or {}
    yield head(
        "wsroute_memory_queued_bytes", "Bytes queued in all handlers (estimated).", "gauge"
    ) + (f"wsroute_memory_queued_bytes {_float(memory.get('queued_bytes'))}\n")
    yield head("wsroute_memory_budget_bytes", "The daemon-wide memory_budget.", "gauge") + (
        f"wsroute_memory_budget_bytes {_float(memory.get('budget'))}\n"
    )
    counts = snap.get("reloads") or {}
    yield head("wsroute_config_reloads_total", "Config reloads, by result.", "counter") + "".join(
        f'wsroute_config_reloads_total{{result="{result}"}} {_float(counts.get(result))}\n'
        for result in ("success", "failure")
    )


def _float(value: Any) -> str:
    return repr(_number(value))


def _escape(value: str) -> str:
    # The text format's label value escapes: backslash, double quote, line feed.
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class Metrics:
    """wsroute's families (:func:`render_text`) plus ``process_*`` from a private
    registry; :meth:`render` per scrape."""

    #: The Content-Type of :meth:`render`'s text.
    content_type = CONTENT_TYPE

    def __init__(self, service: DaemonView) -> None:
        self.service = service
        self.registry = CollectorRegistry()  # process_* only
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        """The Prometheus text format of every metric, read now."""
        return render_text(status(self.service)).encode() + generate_latest(self.registry)

    async def render_async(self) -> bytes:
        """:meth:`render` for a scrape: the counters read at once (one consistent
        snapshot), then the text written a family at a time, the event loop running
        in between, so that a scrape never holds the routing for long."""
        parts = []
        for text in family_texts(status(self.service)):
            parts.append(text)
            await asyncio.sleep(0)
        return "".join(parts).encode() + generate_latest(self.registry)
