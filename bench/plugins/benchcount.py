"""The benchmark's handler plugin: count messages, say when the expected count is reached.

Loaded by ``wsroute run`` from the ``bench/plugins`` folder (``[daemon]
plugin_paths``) as ``plugin = "benchcount:Count"``. When it has handled
``expect`` messages it prints one JSON line on stdout (wsroute logs to stderr)::

    {"event": "done", "handler": NAME, "t": MONOTONIC_NS, "count": N, ...}

``t`` is ``time.monotonic_ns()``, a clock shared by every process of the machine, so the
driver can subtract the upstream's start time from it. With ``latency = true``
each message's ``body["ts"]`` (the upstream's ``time.time_ns()`` at send) is
subtracted from the time it is handled, into a preallocated array; the
percentiles are in the done line. With ``delay`` the handler sleeps that long
per message (the slow-handler scenarios).

The bare-websockets baseline (``bench/baseline.py``) uses :class:`Tally` too,
so both sides count and measure in the same way; that is why this module
imports nothing from wsroute at run time (the baseline's RSS stays bare).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the baseline imports this module: it must not pull wsroute in
    from wsroute import HandlerContext, Message

# The first messages run cold code paths (first-call imports, cache fills):
# their latencies are left out of the percentiles.
WARMUP = 500


class Tally:
    """Count events; record latencies; report once ``expect`` is reached."""

    __slots__ = ("count", "every", "expect", "label", "lat", "latency")

    def __init__(
        self, expect: int, *, latency: bool = False, label: str = "", every: int = 0
    ) -> None:
        self.count = 0
        self.expect = expect
        self.every = every
        self.label = label
        self.latency = latency
        self.lat = array("q", bytes(8 * max(expect, 1))) if latency else array("q")

    def record(self, sent_ns: int) -> None:
        """Store one latency (call before :meth:`tick` for the same message)."""
        i = self.count
        if i < len(self.lat):
            self.lat[i] = time.time_ns() - sent_ns

    def progress(self) -> None:
        """Print a progress line (time-bounded scenarios have no expected count)."""
        line = {"event": "progress", "handler": self.label, "t": time.monotonic_ns()}
        line["count"] = self.count
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def report(self) -> None:
        """Print the done line (called when ``expect`` is reached)."""
        fields: dict[str, Any] = {
            "event": "done",
            "handler": self.label,
            "t": time.monotonic_ns(),
            "count": self.count,
        }
        if self.latency:
            fields.update(percentiles(self.lat[WARMUP : self.count]))
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def percentiles(values: array[int]) -> dict[str, float]:
    """p50/p99/p99.9/max of latencies in ns, as µs."""
    ordered = sorted(values)
    if not ordered:
        return {}
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1000.0

    return {
        "p50_us": at(0.5),
        "p99_us": at(0.99),
        "p999_us": at(0.999),
        "max_us": ordered[-1] / 1000.0,
        "samples": n,
    }


class Count:
    """Count messages; print a done line after ``expect`` of them."""

    @dataclass
    class Options:
        expect: int = 0  # print the done line when this many are handled (0: never)
        latency: bool = False  # record now - body["ts"] per message
        delay: float = 0.0  # seconds to sleep per message (a slow handler)
        every: int = 0  # with delay: a progress line every this many messages
        read: bool = False  # read message.body (builds a lazy body), as most handlers do

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.tally = Tally(
            options.expect, latency=options.latency, label=ctx.name, every=options.every or 1000
        )
        self.delay = options.delay
        self.latency = options.latency
        self.read = options.read
        self.bodies = 0

    async def handle(self, message: Message) -> None:
        tally = self.tally
        if self.read and message.body is not None:
            self.bodies += 1
        if self.latency:
            tally.record(message.body["ts"])
        if self.delay:
            await asyncio.sleep(self.delay)  # wsroute runs anyio on asyncio
            if tally.count % tally.every == 0:
                tally.progress()
        tally.count += 1
        if tally.count == tally.expect:
            tally.report()
