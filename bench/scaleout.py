"""Scale-out throughput: ``.venv/bin/python bench/scaleout.py [--quick]``.

Frames per second end to end through Redis, beside the in-process figure:

- **in-process**: the benchmark upstream (``bench/upstream.py``, small binary
  frames, flooding) → one ``wsroute run`` with the counting handler
  (``benchcount:Count``): ``harness.run_once``, as ``bench/run.py`` measures it;
- **ingest only**: upstream → ingest ``wsroute run`` (the ``redis`` sink,
  stream mode, ``concurrency = 64``, ``pack`` 1 or 16) → Redis; the figure is
  when the last frame is stored (the driver polls the stream's last entry);
- **end to end**: the same ingest, and 1 or 3 worker ``wsroute run`` processes
  (``redis-stream`` source, a counting handler) reading the stream through one
  consumer group from the start; the figure is when the last frame is handled
  (the workers report the time of their last message when stopped).

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
import contextlib
import datetime as dt
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

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

[connections.up]
url = "ws://127.0.0.1:{port}/"
codec = "exchange"
compression = "none"
{codec}
[routes.ticks]
key = 1
handlers = ["store"]

[handlers.store]
plugin = "redis"
url = "{url}"
stream = "{stream}"
concurrency = {concurrency}
pack = {pack}
{extra}
"""

WORKER = """
[daemon]
log_level = "warning"
shutdown_timeout = "5s"
plugin_paths = [{plugins}]

[sources.ticks]
type = "redis-stream"
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

# The workers' handler: count, remember when the last message came, say so when stopped.
TAIL = '''
"""Count messages; on stop print {"event": "totals", "count": N, "last": MONOTONIC_NS}."""

import json
import sys
import time


class Tail:
    def __init__(self, options, ctx):
        self.count = 0
        self.last = 0

    async def handle(self, message):
        self.count += 1
        self.last = time.monotonic_ns()

    async def stop(self):
        line = {"event": "totals", "count": self.count, "last": self.last}
        sys.stdout.write(json.dumps(line) + "\\n")
        sys.stdout.flush()
'''

CONCURRENCY = 64  # the ingest sink's handler workers: up to this many entries per round trip


@dataclass(frozen=True)
class Setup:
    """One row of the table."""

    name: str
    title: str
    workers: int = -1  # -1: in-process (no Redis); 0: ingest only
    pack: int = 1
    dedupe: str = ""  # the sink's dedupe options, as TOML lines
    unique: bool = False  # every frame distinct: the upstream stamps each one (paced mode)


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
]


@dataclass
class Measured:
    """What one run measured (``None``: not part of this setup)."""

    fps: float | None = None  # end to end: handled by the counting handler(s)
    stored_fps: float | None = None  # stored in Redis by the ingest daemon
    ingest_cpu_us: float | None = None  # CPU per frame of the ingest (or in-process) daemon
    workers_cpu_us: float | None = None  # all workers together
    redis_cpu_us: float | None = None
    entries_per_frame: float | None = None  # stream entries / frames (below 1 with pack)
    other_cpu_pct: float | None = None  # CPU of other processes meanwhile, % of one core
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
                    plugins=json.dumps(str(plugins)),
                    url=server.url,
                    stream=stream,
                    consumer=f"w{index}",
                    codec=CODEC,
                )
            )
            worker = Proc([PYTHON, "-m", "wsroute.cli", "run", "-c", str(config)], stderr=errors)
            workers.append(worker)
            procs.append(worker)
        if workers:
            _poll(lambda: _consumers(client, stream) == len(workers), 60, "the workers to read")
        argv = [PYTHON, str(BENCH / "upstream.py"), "--kind=binary", f"--count={frames}"]
        if setup.unique:
            argv.append("--rate=10000000")  # paced mode: each frame encoded when sent
        upstream = Proc([*argv, "--wait-go", "--hold"], stderr=errors, stdin=True)
        procs.append(upstream)
        stack.callback(upstream.send, "stop")
        port = upstream.expect("listening", 30)["port"]
        config = workdir / "ingest.toml"
        config.write_text(
            INGEST.format(
                port=port,
                url=server.url,
                stream=stream,
                concurrency=CONCURRENCY,
                pack=setup.pack,
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
            totals = [w.expect("totals", 30) for w in workers]
            result.handled = [t["count"] for t in totals]
            result.fps = frames / ((max(t["last"] for t in totals) - t0) / 1e9)
            if sum(result.handled) < frames:
                raise RuntimeError(f"{setup.name}: handled {sum(result.handled)} of {frames}")
        stored, entries = stored_frames(client, stream)
        if stored != frames:
            raise RuntimeError(f"{setup.name}: {stored} frames stored, {frames} sent")
        result.entries_per_frame = entries / frames
    client.delete(stream)
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
        " | workers CPU µs/frame | redis-server CPU µs/frame | entries per frame"
        " | other processes' CPU, % of a core |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for setup, runs in rows:
        out.append(
            f"| {setup.title} | {f(median([r.fps for r in runs]), ',.0f')}"
            f" | {f(median([r.stored_fps for r in runs]), ',.0f')}"
            f" | {f(median([r.ingest_cpu_us for r in runs]), '.1f')}"
            f" | {f(median([r.workers_cpu_us for r in runs]), '.1f')}"
            f" | {f(median([r.redis_cpu_us for r in runs]), '.1f')}"
            f" | {f(median([r.entries_per_frame for r in runs]), '.3f')}"
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
    opts = p.parse_args(argv)
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
    (workdir / "redis").mkdir()
    server = RedisProcess(workdir / "redis")
    rows: list[tuple[Setup, list[Measured]]] = []
    try:
        for setup in setups:
            measured = []
            for rep in range(runs):
                if setup.workers < 0:
                    got = in_process(frames, workdir)
                else:
                    got = through_redis(setup, frames, server, workdir, len(rows) * runs + rep)
                measured.append(got)
                shown = {k: round(v, 1) for k, v in asdict(got).items() if isinstance(v, float)}
                print(f"  {setup.name} #{rep + 1}: {shown} handled={got.handled}", file=sys.stderr)
            rows.append((setup, measured))
    finally:
        server.stop()
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
        f"{_redis_version()}, redis-py {redis.__version__}",
        f"- {frames:,} small binary frames (98 bytes) per run, {runs} runs per setup, medians; "
        f"the ingest sink runs with concurrency = {CONCURRENCY}; Redis with appendonly yes, "
        "appendfsync everysec",
        f"- command: `{command}`",
        "",
        table(rows),
        "",
    ]
    path = base.with_suffix(".md")
    path.write_text("\n".join(lines))
    return path


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
