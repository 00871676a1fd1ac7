"""Per-operation costs of the hot path, in-process: ``.venv/bin/python bench/micro.py``.

Not part of the suite's table: this splits the per-frame cost that
``bench/run.py`` measures from outside into its pieces, using wsroute's real
classes (codec, router, dispatcher, handler runner) and websockets' real
protocol parser, each timed in a tight loop. The numbers back the
recommendations in ``bench/README.md``; they are ns per operation, median of
5 repetitions, on an otherwise idle loop (no network, no GC pressure from a
full queue). ``--quick``: a tenth of the iterations, one repetition (a smoke
run: the figures are rougher).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.lowlevel import checkpoint
from websockets.protocol import Protocol, Side, State

sys.path.insert(0, str(Path(__file__).resolve().parent))

from upstream import encoded, payload

from wsroute.codec import JsonCodec, StructCodec
from wsroute.config import HandlerSection
from wsroute.dispatch import Dispatcher
from wsroute.handler import HandlerRunner, HandlerStats, MemoryBudget
from wsroute.plugin import Frame, Message
from wsroute.router import Router

N = 200_000
REPEAT = 5
SCALE = 1  # --quick: 10 (every loop runs a tenth as often)


def timeit(fn: Callable[[int], Any], n: int = N) -> float:
    """Median ns per operation of ``fn(n)``, which runs the operation n times."""
    n //= SCALE
    samples = []
    for _ in range(REPEAT):
        gc.collect()
        t = time.perf_counter_ns()
        fn(n)
        samples.append((time.perf_counter_ns() - t) / n)
    return statistics.median(samples)


async def atimeit(fn: Callable[[int], Any], n: int = N) -> float:
    n //= SCALE
    samples = []
    for _ in range(REPEAT):
        gc.collect()
        t = time.perf_counter_ns()
        await fn(n)
        samples.append((time.perf_counter_ns() - t) / n)
    return statistics.median(samples)


class Counter:
    """The benchmark handler's essence: count."""

    def __init__(self) -> None:
        self.count = 0

    async def handle(self, message: Message) -> None:
        self.count += 1


def exchange() -> StructCodec:
    return StructCodec(
        StructCodec.Options(header="<i", fields=["opcode"], body="json", key="opcode")
    )


def sync_costs(rows: list[tuple[str, float]]) -> None:
    small = payload("binary", 7, time.time_ns())[0]
    large = payload("large", 7, time.time_ns())[0]
    text = payload("json", 7, time.time_ns())[0].decode()
    codec = exchange()
    jcodec = JsonCodec(JsonCodec.Options(key="type"))
    now = time.time

    def t_time(n: int) -> None:
        for _ in range(n):
            now()

    def t_frame(n: int) -> None:
        for i in range(n):
            Frame("up", small, i, 0.0)

    frame = Frame("up", small, 1, 0.0)
    lframe = Frame("up", large, 1, 0.0)
    jframe = Frame("up", text, 1, 0.0)

    def t_decode(f: Frame, c: Any) -> Callable[[int], None]:
        def run(n: int) -> None:
            d = c.decode
            for _ in range(n):
                d(f)

        return run

    dec = msgspec.json.Decoder().decode
    body = small[4:]
    lbody = large[4:]

    def t_msgspec(b: bytes) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                dec(b)

        return run

    def t_message(n: int) -> None:
        for i in range(n):
            Message("up", 1, None, fields={"opcode": 1}, raw=small, seq=i, received_at=0.0)

    def t_message_fast(n: int) -> None:
        # A prototype: what a positional, kwargs-free constructor would cost.
        new = Message.__new__
        for i in range(n):
            m = new(Message)
            m.connection = "up"
            m.key = 1
            m.body = None
            m.fields = {"opcode": 1}
            m.raw = small
            m.seq = i
            m.received_at = 0.0
            m.dead_letter = None

    runner = HandlerRunner.__new__(HandlerRunner)  # offer() needs only these attributes
    runner._queue = deque()
    runner.acks = {}
    runner._limit = 10**9
    runner.queued_raw = 0
    runner._raw_limit = 10**15
    runner.budget = MemoryBudget()
    runner._policy = "block"
    runner._accepting = True
    runner.stats = HandlerStats()
    runner._item_set = True  # as if no worker waited: offer() does not touch the event
    router = Router.compile([("ticks", None, [1], [runner])])
    dispatcher = Dispatcher(router)
    msg = codec.decode(frame)

    def t_lookup(n: int) -> None:
        lookup = router.lookup
        for _ in range(n):
            lookup("up", 1)

    def t_dispatch(n: int) -> None:
        d = dispatcher.dispatch
        q = runner._queue
        for _ in range(n):
            d(msg)
        q.clear()
        runner.queued_raw = 0
        runner.budget.raw = 0

    rows.append(("time.time()", timeit(t_time)))
    rows.append(("Frame(...)", timeit(t_frame)))
    rows.append(("Message(...) (what a codec builds)", timeit(t_message)))
    rows.append(("  prototype: Message.__new__ + 9 slot stores", timeit(t_message_fast)))
    rows.append(("Router.lookup(connection, key) (memo hit)", timeit(t_lookup)))
    rows.append(("Dispatcher.dispatch(message), 1 target (lookup + offer)", timeit(t_dispatch)))
    rows.append(("msgspec decode of the ~86-byte JSON body", timeit(t_msgspec(body))))
    rows.append(("StructCodec.decode, small binary frame", timeit(t_decode(frame, codec))))
    rows.append(("JsonCodec.decode, ~87-byte text frame", timeit(t_decode(jframe, jcodec))))
    rows.append(("msgspec decode of the 4 KiB order-book body", timeit(t_msgspec(lbody), 20_000)))
    rows.append(("StructCodec.decode, 4 KiB frame", timeit(t_decode(lframe, codec), 20_000)))


def parse_costs(rows: list[tuple[str, float]]) -> None:
    """websockets' sans-I/O parser: what every client pays, baseline included."""
    chunk = b"".join(encoded("binary", i, time.time_ns()) for i in range(1000))

    def run(n: int) -> None:
        proto = Protocol(Side.CLIENT, state=State.OPEN, max_size=2**20)
        for _ in range(n // 1000):
            proto.receive_data(chunk)
            proto.events_received()

    rows.append(("websockets Protocol.receive_data parse, per small frame", timeit(run)))

    # The frame reader's split, into the inbox's deque: each 16 KiB read copied into
    # its buffer and handed over as the event loop does (no socket).
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    from wsroute.reader import FrameReader

    reader = FrameReader(
        ClientProtocol(parse_uri("ws://bench/"), state=State.OPEN, max_size=2**20), 2**20, 1.0
    )
    reader._open = reader._fast = True  # as after a handshake
    view = reader.get_buffer(-1)
    reads = [chunk[i : i + 16384] for i in range(0, len(chunk), 16384)]

    def split(n: int) -> None:
        messages = reader.inbox.messages
        for _ in range(n // 1000):
            for data in reads:
                view[: len(data)] = data
                reader.buffer_updated(len(data))
            messages.clear()
            reader.inbox.size = 0

    rows.append(("wsroute's frame reader split, per small frame (16 KiB reads)", timeit(split)))


async def async_costs(rows: list[tuple[str, float]]) -> None:
    async def t_fail_after(n: int) -> None:
        for _ in range(n):
            with anyio.fail_after(5):  # noqa: ASYNC100 (the cost of the scope is the point)
                pass

    async def t_asyncio_timeout(n: int) -> None:
        for _ in range(n):
            async with asyncio.timeout(5):  # noqa: ASYNC100
                pass

    async def t_scope(n: int) -> None:
        for _ in range(n):
            with anyio.CancelScope():  # noqa: ASYNC100
                pass

    async def t_scope_deadline(n: int) -> None:
        with anyio.CancelScope() as scope:  # noqa: ASYNC100
            for _ in range(n):
                scope.deadline = anyio.current_time() + 5

    handler = Counter()

    async def t_await(n: int) -> None:
        h = handler.handle
        m = Message("up", 1, None)
        for _ in range(n):
            await h(m)

    async def t_switch(n: int) -> None:
        # Two tasks taking turns through asyncio events: one round trip = 2 switches.
        a, b = asyncio.Event(), asyncio.Event()

        async def other() -> None:
            for _ in range(n):
                await a.wait()
                a.clear()
                b.set()

        task = asyncio.ensure_future(other())
        for _ in range(n):
            a.set()
            await b.wait()
            b.clear()
        await task

    async def t_checkpoint(n: int) -> None:
        for _ in range(n):
            await checkpoint()

    async def t_sleep0(n: int) -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    rows.append(("anyio.fail_after(5) enter+exit", await atimeit(t_fail_after)))
    rows.append(("asyncio.timeout(5) enter+exit (stdlib, 3.11)", await atimeit(t_asyncio_timeout)))
    rows.append(("anyio.CancelScope() enter+exit (no deadline)", await atimeit(t_scope)))
    rows.append(
        ("CancelScope.deadline = now + 5 (one scope reused)", await atimeit(t_scope_deadline))
    )
    rows.append(("await handler.handle(message) (counting coroutine)", await atimeit(t_await)))
    rows.append(
        ("task switch: asyncio.Event ping-pong, per round trip", await atimeit(t_switch, 50_000))
    )
    rows.append(("anyio.lowlevel.checkpoint()", await atimeit(t_checkpoint, 50_000)))
    rows.append(("asyncio.sleep(0)", await atimeit(t_sleep0, 50_000)))

    for timeout in (5.0, 0.0):
        for batch in (1, 64, 1024):
            cost = await runner_cost(timeout, batch)
            rows.append(
                (
                    f"HandlerRunner: offer + worker + handle, timeout={timeout:g}, {batch}/wake-up",
                    cost,
                )
            )
    rows.append(("  floor: a bare worker loop, no accounting, 64/wake-up", await inline_cost()))
    for handlers in (1, 3):
        cost = await pipeline_cost(handlers)
        name = f"wsroute per frame, no websockets: Frame+decode+dispatch+worker, x{handlers}"
        rows.append((name, cost))
    for handlers in (1, 3):
        cost = await pipeline_cost(handlers, per_read=True)
        name = f"  the same per read of 170: decode_many+dispatch_many+worker, x{handlers}"
        rows.append((name, cost))


async def runner_cost(timeout: float, batch: int, n: int = 100_000) -> float:
    """Per-message cost of the runner: ``batch`` offers, then one yield to the worker."""
    n //= SCALE
    samples = []
    for _ in range(REPEAT):
        section = HandlerSection(plugin="bench", queue=10_000, timeout=timeout)  # type: ignore[arg-type]
        handler = Counter()
        runner = HandlerRunner("count", section, handler)
        message = Message("up", 1, None)
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            gc.collect()
            t = time.perf_counter_ns()
            offer = runner.offer
            for _ in range(n // batch):
                for _ in range(batch):
                    offer(message)
                while runner.queued:
                    await asyncio.sleep(0)
            samples.append((time.perf_counter_ns() - t) / (n // batch * batch))
            await runner.stop_workers("bench")
        assert handler.count == n // batch * batch, handler.count
    return statistics.median(samples)


async def _inline_worker(
    handler: Counter,
    queue: deque[Message],
    busy: list[Message | None],
    stats: HandlerStats,
    wake: asyncio.Event,
    stop: list[bool],
) -> None:
    call = handler.handle
    acks: dict[int, Any] = {}  # as HandlerRunner.acks: empty without a source
    while not stop[0]:
        if not queue:
            wake.clear()
            await wake.wait()
            continue
        message = queue.popleft()
        busy[0] = message
        await call(message)  # the slow path (errors, retries, timeouts) would branch off here
        stats.handled += 1
        if acks:
            ack = acks.pop(id(message), None)
            if ack is not None:
                ack.done()
        busy[0] = None


async def inline_cost(batch: int = 64, n: int = 100_000) -> float:
    """A floor for the worker: pop, call, count; no watchdog stamps, no busy list."""
    n //= SCALE
    samples = []
    for _ in range(REPEAT):
        handler = Counter()
        queue: deque[Message] = deque()
        stats = HandlerStats()
        wake = asyncio.Event()
        stop = [False]
        task = asyncio.ensure_future(_inline_worker(handler, queue, [None], stats, wake, stop))
        message = Message("up", 1, None)
        gc.collect()
        t = time.perf_counter_ns()
        for _ in range(n // batch):
            for _ in range(batch):
                stats.received += 1
                queue.append(message)
                if not wake.is_set():
                    wake.set()
            while queue:
                await asyncio.sleep(0)
        samples.append((time.perf_counter_ns() - t) / (n // batch * batch))
        stop[0] = True
        wake.set()
        await task
    return statistics.median(samples)


async def pipeline_cost(handlers: int, n: int = 100_000, *, per_read: bool = False) -> float:
    """What the reader and the workers do per frame, minus websockets; ``per_read``: the
    frames of a 16 KiB read (~170 small ones) at a time, as the connection hands them."""
    n //= SCALE
    samples = []
    datas = [payload("binary", i, time.time_ns())[0] for i in range(1000)]
    for _ in range(REPEAT):
        runners = [
            HandlerRunner(f"c{i}", HandlerSection(plugin="bench"), Counter())
            for i in range(handlers)
        ]
        dispatcher = Dispatcher(Router.compile([("ticks", None, [1], runners)]))
        codec = exchange()
        async with anyio.create_task_group() as tg:
            for r in runners:
                await tg.start(r.run)
            gc.collect()
            t = time.perf_counter_ns()
            decode = codec.decode
            dispatch = dispatcher.dispatch
            now = time.time
            seq = 0
            for _ in range(n // 256):
                if per_read:
                    for start in (0, 170):
                        frames = datas[start : start + 170] if start == 0 else datas[170:256]
                        messages: list[Message] = []
                        codec.decode_many("up", frames, 0, seq, now(), messages)
                        seq += len(frames)
                        assert dispatcher.dispatch_many(messages) is None
                        await asyncio.sleep(0)
                else:
                    for i in range(256):
                        seq += 1
                        frame = Frame("up", datas[i], seq, now())
                        pending = dispatch(decode(frame))
                        if pending is not None:
                            await pending
                while any(r.queued for r in runners):
                    await asyncio.sleep(0)
            samples.append((time.perf_counter_ns() - t) / (n // 256 * 256))
            for r in runners:
                await r.stop_workers("bench")
    return statistics.median(samples)


def main() -> None:
    global SCALE, REPEAT
    if "--quick" in sys.argv[1:]:
        SCALE, REPEAT = 10, 1
    rows: list[tuple[str, float]] = []
    sync_costs(rows)
    parse_costs(rows)
    anyio.run(async_costs, rows, backend="asyncio")
    width = max(len(name) for name, _ in rows)
    print(f"{'operation':<{width}}  ns/op")
    for name, ns in rows:
        print(f"{name:<{width}}  {ns:8.0f}")


if __name__ == "__main__":
    main()
