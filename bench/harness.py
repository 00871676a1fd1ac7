"""The measuring harness of ``bench/run.py``: scenarios, configs, processes, one measured run.

A run starts the upstream (``bench/upstream.py``, its own process), waits for
its port, starts one client — the bare ``websockets`` loop
(``bench/baseline.py``) or the real ``wsroute run -c FILE`` — and measures the
client from outside:

- **wall time**: from the upstream's first frame (its ``started`` line) to the
  client's last handled message (the handler's ``done`` line), both read on
  ``CLOCK_MONOTONIC``, which every process of the machine shares;
- **CPU time**: ``utime + stime`` of the client from ``/proc/PID/stat`` read
  right before "go" and right after "done" (10 ms ticks), so start-up and
  shutdown are not counted (``/proc/PID/schedstat`` would be finer, but it
  reads 0 on this kernel);
- **peak RSS**: ``ru_maxrss`` of the client from ``os.wait4``, plus RSS samples
  from ``/proc/PID/statm`` along the way for the memory scenarios.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PLUGINS = BENCH / "plugins"
RESULTS = BENCH / "results"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Scenario:
    """One row of the table: what the upstream sends and how wsroute is wired."""

    name: str
    title: str
    kind: str = "binary"  # upstream frame kind: binary | json | large
    count: int = 0  # frames per connection; 0: time-bounded (duration)
    quick_count: int = 0
    rate: float = 0.0  # frames/s per connection; 0: as fast as the socket takes them
    connections: int = 1
    handlers: int = 1  # handlers on the one route (fan-out)
    latency: bool = False
    delay: float = 0.0  # seconds per message in the handler (a slow handler)
    overflow: str = "block"
    duration: float = 0.0  # time-bounded scenarios: seconds after "go"
    quick_duration: float = 0.0
    idle: bool = False  # no frames at all
    read_body: bool = False  # the handler reads message.body (builds a lazy body)
    validate: bool = True  # the codec's validate option
    deflate: bool = False  # permessage-deflate negotiated (both clients), every frame compressed

    def per_connection(self, quick: bool) -> int:
        return self.quick_count if quick else self.count

    def frames(self, quick: bool) -> int:
        return self.per_connection(quick) * self.connections

    def seconds(self, quick: bool) -> float:
        return self.quick_duration if quick else self.duration


SCENARIOS: list[Scenario] = [
    Scenario("small", "small binary frames, 1 handler", count=300_000, quick_count=60_000),
    Scenario(
        "fanout3",
        "small binary frames, fan-out to 3 handlers",
        count=150_000,
        quick_count=30_000,
        handlers=3,
    ),
    Scenario("json", "JSON text frames, 1 handler", kind="json", count=300_000, quick_count=60_000),
    Scenario(
        "deflate",
        'small binary frames, compression = "deflate"',
        count=150_000,
        quick_count=30_000,
        deflate=True,
    ),
    Scenario(
        "large",
        "4 KiB frames, handler does not read the body",
        kind="large",
        count=60_000,
        quick_count=10_000,
    ),
    Scenario(
        "large-trusted",
        "4 KiB frames, body not read, validate = false",
        kind="large",
        count=60_000,
        quick_count=10_000,
        validate=False,
    ),
    Scenario(
        "large-read",
        "4 KiB frames, handler reads the body",
        kind="large",
        count=60_000,
        quick_count=10_000,
        read_body=True,
    ),
    Scenario(
        "conn100",
        "100 connections x 100 frames/s",
        count=400,
        quick_count=100,
        rate=100.0,
        connections=100,
    ),
    Scenario(
        "latency",
        "latency at 10k frames/s",
        count=60_000,
        quick_count=10_000,
        rate=10_000.0,
        latency=True,
    ),
    Scenario(
        "latency-fanout3",
        "latency at 10k frames/s, fan-out to 3 handlers",
        count=60_000,
        quick_count=10_000,
        rate=10_000.0,
        latency=True,
        handlers=3,
    ),
    Scenario(
        "slow-block",
        "slow handler (1 ms/message), overflow=block",
        delay=0.001,
        duration=6.0,
        quick_duration=2.5,
    ),
    Scenario(
        "slow-drop",
        "slow handler (1 ms/message), overflow=drop-oldest",
        delay=0.001,
        overflow="drop-oldest",
        duration=6.0,
        quick_duration=2.5,
    ),
    Scenario("idle", "idle, 1 connection", idle=True, duration=5.0, quick_duration=1.5),
]
BY_NAME = {s.name: s for s in SCENARIOS}

# Candidate changes to wsroute, measured without editing daemon/ (--experiment).
# Config-level ones change the generated TOML; code-level ones run wsroute
# through bench/experiment.py, which patches them in.
CONFIG_EXPERIMENTS = {
    "timeout0": "handler timeout = 0 (no per-message timeout at all)",
    "queue1000": "handler queue = 1000 instead of the default 10000",
}
CODE_EXPERIMENTS = {
    "gc_threshold": "gc.set_threshold(50_000, 20, 100)",
    "high_water16": "frame reader: stop reading above 16 waiting messages (not 64)",
    "high_water1024": "frame reader: stop reading above 1024 waiting messages (not 64)",
    "read_size64": "frame reader: read 64 KiB from the socket at once (not 16)",
    "read_size256": "websockets transport: read 256 KiB at once (not 16; asyncio's own)",
    "yield_every256": "inbox: 256 messages to the connection per call and inline (not 64)",
}


@dataclass
class Settings:
    """What the command line chose, as the harness needs it."""

    quick: bool = False
    uvloop: bool = False
    experiments: tuple[str, ...] = ()
    probe: bool = False  # run wsroute through bench/probe.py
    api: bool = False  # [daemon.api] on a free loopback port; nobody scrapes or taps

    def environ(self) -> dict[str, str]:
        """The client's environment: no systemd socket, experiments switched on."""
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        code = [n for n in self.experiments if n in CODE_EXPERIMENTS]
        if code:
            env["WSROUTE_EXPERIMENTS"] = ",".join(code)
        return env


def wsroute_config(
    scenario: Scenario, port: int, settings: Settings, api_port: int | None = None
) -> str:
    """The TOML config ``wsroute run`` gets for one scenario (``api_port``: ``[daemon.api]``)."""
    url = f"ws://127.0.0.1:{port}/"
    codec = "events" if scenario.kind == "json" else "exchange"
    lines = [
        "[daemon]",
        'log_level = "warning"  # no per-frame logging',
        'shutdown_timeout = "2s"',
        f"plugin_paths = [{json.dumps(str(PLUGINS))}]",
        f'event_loop = "{"uvloop" if settings.uvloop else "asyncio"}"',
        "",
    ]
    if api_port is not None:
        # The operator's API listening, idle: what merely having it on costs.
        lines += ["[daemon.api]", f'listen = ["127.0.0.1:{api_port}"]', ""]
    for i in range(scenario.connections):
        name = "up" if scenario.connections == 1 else f"up{i}"
        lines += [f"[connections.{name}]", f'url = "{url}"', f'codec = "{codec}"']
        lines.append(f'compression = "{"deflate" if scenario.deflate else "none"}"')
        lines.append("")
    lines += [
        "[codecs.exchange]",
        'type = "struct"',
        'header = "<i"',
        'fields = ["opcode"]',
        'body = "json"',
        'key = "opcode"',
        *([] if scenario.validate else ["validate = false"]),
        "",
        "[codecs.events]",
        'type = "json"',
        'key = "type"',
        *([] if scenario.validate else ["validate = false"]),
        "",
    ]
    if scenario.handlers == 1:
        names = ["count"]
    else:
        names = [f"count{i}" for i in range(1, scenario.handlers + 1)]
    key = '"tick"' if scenario.kind == "json" else "1"
    lines += ["[routes.ticks]", f"key = {key}", f"handlers = {json.dumps(names)}", ""]
    expect = 0 if scenario.duration else scenario.frames(settings.quick)
    for name in names:
        lines += [f"[handlers.{name}]", 'plugin = "benchcount:Count"', f"expect = {expect}"]
        lines.append(f'overflow = "{scenario.overflow}"')
        if "timeout0" in settings.experiments:
            lines.append('timeout = "0s"')
        if "queue1000" in settings.experiments:
            lines.append("queue = 1000")
        if scenario.latency:
            lines.append("latency = true")
        if scenario.read_body:
            lines.append("read = true")
        if scenario.delay:
            lines += [f"delay = {scenario.delay}", "every = 20"]
        lines.append("")
    return "\n".join(lines)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def check_api(port: int, timeout: float = 5.0) -> None:
    """One ``GET /health`` before "go": the API is really on (and then left alone)."""
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", "/health")
            status = conn.getresponse().status
            if status == 200:
                return
            problem = f"answered {status}"
        except OSError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"--api: GET http://127.0.0.1:{port}/health {problem}")
        time.sleep(0.1)


def client_argv(client: str, scenario: Scenario, port: int, config: Path, s: Settings) -> list[str]:
    """The command line of the client under test."""
    if client == "baseline":
        argv = [PYTHON, str(BENCH / "baseline.py"), "--url", f"ws://127.0.0.1:{port}/"]
        argv += ["--connections", str(scenario.connections)]
        argv += ["--expect", str(0 if scenario.duration else scenario.frames(s.quick))]
        if scenario.latency:
            argv.append("--latency")
        if scenario.delay:
            argv += ["--delay", str(scenario.delay), "--every", "20"]
        if scenario.deflate:
            argv.append("--deflate")
        if s.uvloop:
            argv.append("--uvloop")
        return argv
    if s.probe:
        return [PYTHON, str(BENCH / "probe.py"), "run", "-c", str(config)]
    if any(n in CODE_EXPERIMENTS for n in s.experiments):
        return [PYTHON, str(BENCH / "experiment.py"), "run", "-c", str(config)]
    return [PYTHON, "-m", "wsroute.cli", "run", "-c", str(config)]


class Proc:
    """A child process whose stdout lines (JSON objects) a thread collects."""

    def __init__(
        self,
        argv: list[str],
        *,
        stderr: IO[bytes],
        env: dict[str, str] | None = None,
        stdin: bool = False,
    ) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
            bufsize=1,
        )
        self.pid = self.popen.pid
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.rusage: Any = None
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.strip()
            if not line:
                continue
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({"event": "text", "text": line})

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next stdout line whose ``event`` is ``event``, waiting ``timeout`` s at most."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.argv[1]}: no {event!r} line within {timeout:.0f} s")
            try:
                item = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.popen.poll() is not None:
                    raise RuntimeError(
                        f"{self.argv[1]} exited with {self.popen.returncode}"
                    ) from None
                continue
            if item.get("event") == event:
                return item

    def drain_lines(self) -> list[dict[str, Any]]:
        """Every line collected and not yet taken."""
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.lines.get_nowait())
        return out

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.popen.stdin.write(text + "\n")
            self.popen.stdin.flush()

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process so far (all threads)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mib(self) -> float:
        """Resident set size now, MiB."""
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**20

    def finish(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        """Signal the process, reap it with ``wait4`` (its rusage); SIGKILL after ``grace`` s."""
        if self.popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        deadline = time.monotonic() + grace
        while True:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.rusage = rusage
                self.popen.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.01)
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        self._thread.join(timeout=2)

    @property
    def peak_rss_mib(self) -> float:
        """``ru_maxrss`` after :meth:`finish` (KiB on Linux), MiB."""
        return float(self.rusage.ru_maxrss) / 1024 if self.rusage is not None else float("nan")


def source_digest() -> str:
    """A short sha256 of daemon/*.py: which wsroute core was measured.

    Others edit daemon/ while benchmarks run; the digest per run shows when the
    code changed under a suite.
    """
    digest = hashlib.sha256()
    for path in sorted(ROOT.glob("daemon/*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass
class Run:
    """What one client run measured; ``None`` where the scenario has no such figure."""

    client: str
    source: str = ""  # source_digest() when the run started
    frames: int = 0
    wall_s: float = 0.0
    fps: float = 0.0
    cpu_s: float = 0.0
    cpu_us_per_frame: float | None = None
    cpu_percent: float | None = None
    rss_connected_mib: float = 0.0
    rss_end_mib: float = 0.0
    peak_rss_mib: float = 0.0
    latency: dict[str, float] = field(default_factory=dict)
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    handled_per_s: float | None = None
    sent_per_s: float | None = None
    rss_growth_mib: float | None = None


Wrap = Callable[[Proc], contextlib.AbstractContextManager[Any]]


def upstream_argv(scenario: Scenario, quick: bool) -> list[str]:
    count = 0 if scenario.duration else scenario.per_connection(quick)
    return [
        PYTHON,
        str(BENCH / "upstream.py"),
        f"--kind={scenario.kind}",
        f"--count={count}",
        f"--rate={scenario.rate}",
        f"--connections={scenario.connections}",
        "--wait-go",
        "--hold",
        *(["--deflate"] if scenario.deflate else []),
    ]


def run_once(
    client: str,
    scenario: Scenario,
    settings: Settings,
    workdir: Path,
    *,
    argv: list[str] | None = None,
    wrap: Wrap | None = None,
) -> Run:
    """Run one client against a fresh upstream and measure it.

    ``argv`` replaces the client's command line (``{config}`` is replaced by the
    config's path); ``wrap(proc)`` is entered from "go" to "done" (a profiler).
    """
    with contextlib.ExitStack() as stack:
        err_up = stack.enter_context(open(workdir / "upstream.err", "ab"))
        err_client = stack.enter_context(open(workdir / f"{client}.err", "ab"))
        upstream = Proc(upstream_argv(scenario, settings.quick), stderr=err_up, stdin=True)
        stack.callback(upstream.finish, signal.SIGTERM, 5)
        stack.callback(upstream.send, "stop")
        port = upstream.expect("listening", 30)["port"]
        config = workdir / f"{scenario.name}.toml"
        api_port = free_port() if settings.api and client == "wsroute" else None
        config.write_text(wsroute_config(scenario, port, settings, api_port))
        if argv is None:
            argv = client_argv(client, scenario, port, config, settings)
        else:
            argv = [a.replace("{config}", str(config)) for a in argv]
        proc = Proc(argv, stderr=err_client, env=settings.environ())
        stack.callback(proc.finish, signal.SIGKILL)
        upstream.expect("connected", 60)
        time.sleep(0.3)  # let the client finish its handshake and settle
        if api_port is not None:
            check_api(api_port)
        result = Run(client=client, source=source_digest())
        result.rss_connected_mib = proc.rss_mib()
        cpu0 = proc.cpu_seconds()
        with wrap(proc) if wrap is not None else contextlib.nullcontext():
            if scenario.idle:
                _idle(result, scenario, settings, proc, cpu0)
            elif scenario.duration:
                _timed(result, scenario, settings, upstream, proc, cpu0)
            else:
                _counted(result, scenario, settings, upstream, proc, cpu0)
        # A slow handler's full queue would take long to drain: kill those.
        proc.finish(signal.SIGKILL if scenario.duration else signal.SIGTERM)
        result.peak_rss_mib = proc.peak_rss_mib
        return result
    raise AssertionError("unreachable")  # pragma: no cover


def _idle(result: Run, scenario: Scenario, settings: Settings, proc: Proc, cpu0: float) -> None:
    start = time.monotonic()
    time.sleep(scenario.seconds(settings.quick))
    result.cpu_s = proc.cpu_seconds() - cpu0
    result.cpu_percent = 100 * result.cpu_s / (time.monotonic() - start)
    result.rss_end_mib = proc.rss_mib()


def _counted(
    result: Run, scenario: Scenario, settings: Settings, upstream: Proc, proc: Proc, cpu0: float
) -> None:
    """A fixed number of frames: wait for the handlers' done lines."""
    frames = scenario.frames(settings.quick)
    upstream.send("go")
    t0 = upstream.expect("started", 30)["t"]
    budget = 60 + frames / 5000
    if scenario.rate:
        budget += frames / (scenario.rate * scenario.connections)
    lines = scenario.handlers if result.client == "wsroute" else 1
    dones = [proc.expect("done", budget) for _ in range(lines)]
    result.cpu_s = proc.cpu_seconds() - cpu0
    result.rss_end_mib = proc.rss_mib()
    t1 = max(d["t"] for d in dones)
    result.frames = frames
    result.wall_s = (t1 - t0) / 1e9
    result.fps = frames / result.wall_s
    result.cpu_us_per_frame = result.cpu_s / frames * 1e6
    if scenario.latency:
        # With fan-out, each handler measured its own: the slowest one's figures (the
        # last handler a frame reaches waits for the others).
        wanted = ("p50_us", "p99_us", "p999_us", "max_us")
        result.latency = {k: max(d[k] for d in dones) for k in wanted if k in dones[0]}
        result.latency["samples"] = dones[0].get("samples", 0)


def _timed(
    result: Run, scenario: Scenario, settings: Settings, upstream: Proc, proc: Proc, cpu0: float
) -> None:
    """A fixed time with the upstream flooding; RSS sampled every 0.1 s (slow handlers)."""
    seconds = scenario.seconds(settings.quick)
    upstream.send("go")
    t0 = upstream.expect("started", 30)["t"] / 1e9
    start = time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        result.rss_samples.append((round(now - start, 2), round(proc.rss_mib(), 2)))
        time.sleep(0.1)
    result.cpu_s = proc.cpu_seconds() - cpu0
    result.cpu_percent = 100 * result.cpu_s / seconds
    result.rss_end_mib = proc.rss_mib()
    progress = [p for p in proc.drain_lines() if p.get("event") == "progress"]
    upstream.send("stop")
    sent = upstream.expect("sent", 30)
    result.sent_per_s = sent["count"] / (sent["t"] / 1e9 - t0)
    if len(progress) >= 2:
        first, last = progress[0], progress[-1]
        result.handled_per_s = (last["count"] - first["count"]) / ((last["t"] - first["t"]) / 1e9)
        result.frames = last["count"]
    # Flat memory: the peak of the second half against the peak from 1 s to half-time.
    late = [rss for t, rss in result.rss_samples if t >= seconds / 2]
    early = [rss for t, rss in result.rss_samples if 1.0 <= t < seconds / 2] or late[:1]
    if late and early:
        result.rss_growth_mib = round(max(late) - max(early), 2)
