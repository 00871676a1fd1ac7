"""The operator's API, ``[daemon.api]``: health, readiness, metrics, status and the tap.

One module per concept: :mod:`.server` (the listeners and the HTTP answers),
:mod:`.metrics` (the Prometheus collector, imported at the first scrape),
:mod:`.names` (:data:`METRIC_NAMES`),
:mod:`.tap` (live messages to ``/tap`` clients). Invariant: nothing here adds
work per frame except the tap's hook, and only while someone taps.
"""

from __future__ import annotations

from .names import METRIC_NAMES
from .server import ENDPOINTS, ApiServer
from .tap import TapHub

__all__ = ["ENDPOINTS", "METRIC_NAMES", "ApiServer", "TapHub"]
