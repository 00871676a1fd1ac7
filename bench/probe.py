"""``wsroute run`` with counters around the hot path: ``python bench/probe.py run -c FILE``.

For diagnosis only (``bench/run.py --probe``): it wraps a few methods of the
real classes before calling ``wsroute.cli.main``, and when the daemon exits it
writes, to the file named by ``$WSROUTE_PROBE_OUT`` (JSON):

- ``wakeups``: how often an offer found the worker asleep (one task switch each),
  and ``offers``, so ``offers / wakeups`` is the mean batch a worker drains;
- ``inline``: frames handed to the handlers inside the socket callback (the
  reader waited with nothing in hand, within its budget);
- ``reader_waits``: socket reads that woke the waiting reader (one event-loop
  iteration each), ``reader_gets``, every frame handed to the connection's
  frame handler, and ``reader_batches``, the calls that handed them (a read's
  frames, or up to 64 of them);
- ``offer_calls``: how many ``offer_many`` calls queued the ``offers``;
- ``blocked``: how often a full ``block`` queue made the reader wait;
- ``queue_max`` and a histogram of the queue length seen at each offer;
- ``gc``: collections and their total time per generation.

The wrappers cost time themselves: read the counts, not the speed.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import time
from collections import Counter
from typing import Any

from wsroute import dispatch, frames, handler, reader, wire
from wsroute.cli import main

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from experiment import apply

stats: dict[str, Any] = {
    "offers": 0,
    "wakeups": 0,
    "inline": 0,
    "reader_waits": 0,
    "reader_gets": 0,
    "reader_batches": 0,
    "offer_calls": 0,
    "blocked": 0,
    "queue_max": 0,
}
queue_hist: Counter[str] = Counter()
gc_stats = {g: {"count": 0, "seconds": 0.0} for g in (0, 1, 2)}
_gc_started = [0.0]


def _gc_callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        entry = gc_stats[info["generation"]]
        entry["count"] += 1
        entry["seconds"] += time.perf_counter() - _gc_started[0]


def _bucket(n: int) -> str:
    for edge in (0, 1, 16, 64, 256, 1024, 4096, 9999):
        if n <= edge:
            return f"<={edge}"
    return ">=10000"


_offer = handler.HandlerRunner.offer


def offer(self: handler.HandlerRunner, message: Any) -> bool:
    stats["offers"] += 1
    n = len(self._queue)
    queue_hist[_bucket(n)] += 1
    if n > stats["queue_max"]:
        stats["queue_max"] = n
    asleep = not self._item.is_set()
    ok = _offer(self, message)
    if ok and asleep and self._item.is_set():
        stats["wakeups"] += 1
    return ok


_wait = dispatch.Dispatcher._wait


async def blocked_wait(self: dispatch.Dispatcher, message: Any, blocked: Any) -> None:
    stats["blocked"] += 1
    await _wait(self, message, blocked)


_take_many = wire.Inbox.take_many


def take_many(self: wire.Inbox, batch: Any) -> None:
    stats["inline"] += len(batch)
    _take_many(self, batch)


_offer_many = handler.HandlerRunner.offer_many


def offer_many(self: handler.HandlerRunner, messages: Any) -> int:
    stats["offers"] += len(messages)
    stats["offer_calls"] += 1
    n = len(self._queue)
    queue_hist[_bucket(n)] += 1
    if n > stats["queue_max"]:
        stats["queue_max"] = n
    asleep = not self._item.is_set()
    taken = _offer_many(self, messages)
    if taken and asleep and self._item.is_set():
        stats["wakeups"] += 1
    return taken


_handle = frames.ReadPath.handle


def handle(self: frames.ReadPath, batch: Any) -> Any:
    stats["reader_gets"] += len(batch)
    stats["reader_batches"] += 1
    return _handle(self, batch)


_buffer_updated = reader.FrameReader.buffer_updated


def buffer_updated(self: Any, nbytes: int) -> None:
    inbox = getattr(self, "inbox", None)
    waiting = inbox is not None and inbox.waiter is not None
    _buffer_updated(self, nbytes)
    if waiting and inbox is not None and inbox.waiter is None:  # this read woke the reader
        stats["reader_waits"] += 1


def _dump() -> None:
    path = os.environ.get("WSROUTE_PROBE_OUT")
    if not path:
        return
    out = dict(stats, queue_hist=dict(queue_hist), gc=gc_stats, gc_threshold=gc.get_threshold())
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    apply([n for n in os.environ.get("WSROUTE_EXPERIMENTS", "").split(",") if n])
    handler.HandlerRunner.offer = offer  # type: ignore[method-assign]
    dispatch.Dispatcher._wait = blocked_wait  # type: ignore[method-assign]
    wire.Inbox.take_many = take_many  # type: ignore[method-assign]
    handler.HandlerRunner.offer_many = offer_many  # type: ignore[method-assign]
    frames.ReadPath.handle = handle  # type: ignore[method-assign]
    reader.FrameReader.buffer_updated = buffer_updated  # type: ignore[method-assign]
    gc.callbacks.append(_gc_callback)
    atexit.register(_dump)
    sys.exit(main(sys.argv[1:]))
