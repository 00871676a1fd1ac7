"""``wsroute run`` with candidate changes patched in: measure them before editing daemon/.

``python bench/experiment.py run -c FILE`` with ``$WSROUTE_EXPERIMENTS`` set to a
comma-separated list (``bench/run.py --experiment NAMES`` does this):

- ``gc_threshold``: ``gc.set_threshold(50_000, 20, 100)``: fewer, larger young
  collections;
- ``high_waterN`` (``high_water16``, ``high_water1024``): messages the frame
  reader lets wait for the connection's reader before it stops reading the
  socket, instead of wsroute's 64;
- ``read_sizeN`` (``read_size64``, ``read_size256``): KiB the frame reader
  reads from the socket at once (split in one go), instead of wsroute's 16; 256 is
  asyncio's own, which wsroute used before 2026-12-06;
- ``yield_everyN`` (``yield_every256``): messages the inbox hands the connection in
  one call (and inline, from the socket's callback, while the reader waits) before
  the loop runs, instead of wsroute's 64.

Config-level experiments (``timeout0``, ``queue1000``) are applied by
``bench/run.py`` to the generated TOML, not here. Earlier experiments went
into daemon/ and are gone from here; bench/README.md keeps their numbers: the
reader yielding every 64 frames, timeouts without a cancel scope per message,
``gc_freeze`` (``gc.freeze()`` once started) and ``ws_deque`` (websockets'
messages taken into a deque: now the websockets transport's own reader).
"""

from __future__ import annotations

import gc
import os
import sys

from wsroute.cli import main


def _high_water(size: int) -> None:
    from wsroute import reader, wire

    wire.HIGH_WATER = reader.HIGH_WATER = size


def _read_size(kib: int) -> None:
    from wsroute import reader, wire

    wire.READ_SIZE = reader.READ_SIZE = kib * 1024


def _yield_every(count: int) -> None:
    from wsroute import wire

    wire.YIELD_EVERY = count


def apply(names: list[str]) -> None:
    """Patch in the named experiments; an unknown name is an error."""
    for name in names:
        if name == "gc_threshold":
            gc.set_threshold(50_000, 20, 100)
        elif name.startswith("read_size") and name.removeprefix("read_size").isdigit():
            _read_size(int(name.removeprefix("read_size")))
        elif name.startswith("yield_every") and name.removeprefix("yield_every").isdigit():
            _yield_every(int(name.removeprefix("yield_every")))
        elif name.startswith("high_water") and name.removeprefix("high_water").isdigit():
            _high_water(int(name.removeprefix("high_water")))
        else:
            raise SystemExit(f"experiment.py: unknown experiment {name!r}")


if __name__ == "__main__":
    apply([n for n in os.environ.get("WSROUTE_EXPERIMENTS", "").split(",") if n])
    sys.exit(main(sys.argv[1:]))
