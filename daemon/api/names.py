"""The names of the metrics ``/metrics`` exports: one list, for the collector, the
dashboard's test and the docs' table. Imports nothing heavy."""

from __future__ import annotations

__all__ = ["HANDLER_OUTCOMES", "METRIC_NAMES"]

HANDLER_OUTCOMES = ("handled", "dead_lettered", "dropped", "released", "lost")

#: Every metric wsroute exports besides ``process_*``, as exposed (counters with ``_total``).
METRIC_NAMES: tuple[str, ...] = (
    "wsroute_build_info",
    "wsroute_connection_up",
    "wsroute_connection_frames_total",
    "wsroute_connection_decode_errors_total",
    "wsroute_connection_reconnects_total",
    "wsroute_connection_last_frame_timestamp_seconds",
    "wsroute_unmatched_total",
    "wsroute_handler_received_total",
    "wsroute_handler_messages_total",
    "wsroute_handler_queue_depth",
    "wsroute_handler_queue_capacity",
    "wsroute_handler_queued_bytes",
    "wsroute_handler_in_flight",
    "wsroute_handler_retries_total",
    "wsroute_handler_timeouts_total",
    "wsroute_handler_outage",
    "wsroute_handler_outage_seconds_total",
    "wsroute_source_delivered_total",
    "wsroute_source_settled_total",
    "wsroute_memory_queued_bytes",
    "wsroute_memory_budget_bytes",
    "wsroute_config_reloads_total",
)

# (metric, status field, help) per connection, per handler and per source.
