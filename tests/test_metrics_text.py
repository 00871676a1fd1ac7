"""``/metrics`` written directly is what prometheus_client writes from the same families.

The daemon renders its metric families itself (:func:`wsroute.api.metrics.render_text`,
a tenth of prometheus_client's cost on the event loop). Both texts of one
``/status`` document, with names that need escaping, many handlers and every
field, must parse to the same families, types, help texts and samples.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from wsroute.api.metrics import families, render_text
from wsroute.api.names import METRIC_NAMES


def snapshot(handlers: int) -> dict[str, Any]:
    def handler(i: int) -> dict[str, Any]:
        return {
            "received": 10 * i + 7, "handled": 10 * i, "dead_lettered": 3, "dropped": 2,
            "released": 1, "lost": 0, "in_flight": 1, "queue_depth": i % 5,
            "queue_capacity": 10_000, "queued_bytes": 123_456_789 * i, "retries": i,
            "timeouts": 0, "outage": i % 2, "outage_seconds_total": 0.25 * i,
        }  # fmt: skip

    def connection(state: str, last: float | None) -> dict[str, Any]:
        return {"state": state, "frames": 2**40, "decode_errors": 1, "unmatched": 5,
                "reconnects": 2, "last_frame_at": last}  # fmt: skip

    return {
        "version": '0.1.0+"odd"\\build\n',
        "connections": {
            "up": {
                "state": "connected",
                "frames": 2**40,
                "decode_errors": 1,
                "unmatched": 5,
                "reconnects": 2,
                "last_frame_at": 1733400123.456,
            },
            "down": {
                "state": "backoff",
                "frames": 0,
                "decode_errors": 0,
                "unmatched": 0,
                "reconnects": 9,
                "last_frame_at": None,
            },
        },
        "handlers": {f"h-{i}": handler(i) for i in range(200)},
        "sources": {"ticks": {"delivered": 4, "settled": 3, "unmatched": 1}},
        "memory": {"queued_bytes": 1024, "budget": 536870912},
        "reloads": {"success": 2, "failure": 1},
    }


def parsed(text: str) -> dict[str, Any]:
    out = {}
    for family in text_string_to_metric_families(text):
        samples = sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in family.samples)
        out[family.name] = (family.type, family.documentation, samples)
    return out


def test_the_direct_text_is_prometheus_clients_text() -> None:
    snap = snapshot(200)

    class Fixed(Collector):
        def collect(self) -> Any:
            yield from families(snap)

    registry = CollectorRegistry()
    registry.register(Fixed())
    theirs = parsed(generate_latest(registry).decode())
    ours = parsed(render_text(snap))
    assert ours == theirs
    exposed = {n + ("_total" if t == "counter" else "") for n, (t, _, _) in ours.items()}
    assert exposed == set(METRIC_NAMES)
    # the order of the families is prometheus_client's too
    assert list(ours) == list(theirs)
