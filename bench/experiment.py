"""``wsroute run`` with candidate changes patched in: measure them before editing daemon/.

``python bench/experiment.py run -c FILE`` with ``$WSROUTE_EXPERIMENTS`` set to a
comma-separated list (``bench/run.py --experiment NAMES`` does this), and
``$WSROUTE_UVLOOP`` set to run on uvloop (``bench/run.py --uvloop``):

- ``gc_freeze``: ``gc.freeze()`` once everything is loaded (when the handler
  runners start), so full collections stop walking the import-time heap;
- ``gc_threshold``: ``gc.set_threshold(50_000, 20, 100)``: fewer, larger young
  collections;
- ``max_queueN`` (``max_queue16``, ``max_queue1024``): websockets' ``max_queue``
  (frames it buffers before it stops reading the socket) instead of wsroute's 64.
- ``ws_deque``: a prototype of a lighter receive path for the websockets
  transport, shaped like the picows one: websockets' ``process_event`` appends
  each whole data frame's payload to a deque (instead of its Assembler), and
  ``WebsocketsTransport.read`` drains the deque, yielding every 64 frames, with
  one wake-up per socket read; more than 64 waiting frames pause the socket.
  It skips the Assembler, ``recv()`` and the async generator per frame. A
  measuring prototype: fragmented messages and control frames take websockets'
  own path, invalid UTF-8 in a text frame is not turned into a 1007 close.

Config-level experiments (``timeout0``, ``queue1000``, ``picows``) are applied by
``bench/run.py`` to the generated TOML, not here. Earlier experiments — the
reader yielding every 64 frames, timeouts without a cancel scope per message —
went into daemon/ and are gone from here; bench/README.md keeps their numbers.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import sys
from collections import deque
from typing import Any

from wsroute import handler
from wsroute.cli import main


def _freeze_at_start() -> None:
    original = handler.HandlerRunner.run

    async def run(self: handler.HandlerRunner, **kwargs: Any) -> None:
        # Runners start after the config and every plugin are loaded: freeze then.
        gc.freeze()
        await original(self, **kwargs)

    handler.HandlerRunner.run = run  # type: ignore[method-assign]


def _max_queue(size: int) -> None:
    # The constant moved from connection.py to transport.py; patch whichever has it.
    for name in ("wsroute.transport", "wsroute.connection"):
        try:
            module = importlib.import_module(name)
        except ImportError:  # an older tree
            continue
        if hasattr(module, "_MAX_QUEUE"):
            setattr(module, "_MAX_QUEUE", size)  # noqa: B010 (a private constant, on purpose)
            return
    raise SystemExit("experiment.py: no _MAX_QUEUE in wsroute.transport or wsroute.connection")


_DEQUE_HIGH = 64
_DEQUE_YIELD = 64


def _ws_deque() -> None:
    from websockets.asyncio.client import ClientConnection
    from websockets.exceptions import ConnectionClosed
    from websockets.frames import Opcode

    from wsroute import transport

    binary, text = Opcode.BINARY, Opcode.TEXT
    original = ClientConnection.process_event

    def process_event(self: Any, event: Any) -> None:
        box = getattr(self, "_bench_box", None)
        if box is None or not getattr(event, "fin", False):
            original(self, event)
            return
        opcode = event.opcode
        if opcode is binary:
            data: Any = event.data if type(event.data) is bytes else bytes(event.data)
        elif opcode is text:
            data = bytes(event.data).decode()
        else:
            original(self, event)
            return
        frames = box.frames
        frames.append(data)
        if len(frames) > _DEQUE_HIGH and not box.paused:
            box.paused = True
            self.transport.pause_reading()
        waiter = box.waiter
        if waiter is not None:
            box.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    class Box:
        def __init__(self) -> None:
            self.frames: deque[Any] = deque()
            self.waiter: asyncio.Future[None] | None = None
            self.paused = False

    async def read(self: Any, handle: Any) -> None:
        ws = self.ws
        box = Box()
        ws._bench_box = box
        frames = box.frames
        loop = asyncio.get_running_loop()
        closed = ws.connection_lost_waiter
        # Frames websockets queued before the switch.
        while len(ws.recv_messages.frames):
            frames.append(bytes(ws.recv_messages.frames.queue.popleft().data))
        since_yield = 0

        def wake(_: object) -> None:
            waiter = box.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        closed.add_done_callback(wake)
        try:
            while True:
                while frames:
                    data = frames.popleft()
                    since_yield += 1
                    if since_yield >= _DEQUE_YIELD:
                        since_yield = 0
                        await asyncio.sleep(0)
                    pending = handle(data)
                    if pending is not None:
                        await pending
                if box.paused:
                    box.paused = False
                    if ws.transport is not None:
                        ws.transport.resume_reading()
                if closed.done():
                    return
                box.waiter = waiter = loop.create_future()
                try:
                    await waiter
                finally:
                    box.waiter = None
        except ConnectionClosed:
            pass
        finally:
            closed.remove_done_callback(wake)
            ws._bench_box = None

    ClientConnection.process_event = process_event  # type: ignore[method-assign]
    transport.WebsocketsTransport.read = read  # type: ignore[method-assign]


def apply(names: list[str]) -> None:
    """Patch in the named experiments; an unknown name is an error."""
    for name in names:
        if name == "gc_freeze":
            _freeze_at_start()
        elif name == "gc_threshold":
            gc.set_threshold(50_000, 20, 100)
        elif name == "ws_deque":
            _ws_deque()
        elif name.startswith("max_queue") and name.removeprefix("max_queue").isdigit():
            _max_queue(int(name.removeprefix("max_queue")))
        else:
            raise SystemExit(f"experiment.py: unknown experiment {name!r}")


if __name__ == "__main__":
    apply([n for n in os.environ.get("WSROUTE_EXPERIMENTS", "").split(",") if n])
    if os.environ.get("WSROUTE_UVLOOP"):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main(sys.argv[1:]))
