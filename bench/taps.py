"""What the operator's API costs the routing: reading ``/tap`` clients, and ``/metrics`` scrapes.

Two measurements, each against the real ``wsroute run`` of ``bench/harness.py``:

- ``--taps 0,1,10``: the ``small`` scenario (a flood of small binary frames to
  one counting handler) with that many ``/tap`` clients connected and reading
  as fast as they can (one process, ``--reader`` below, on the API's Unix
  socket). Frames/s and CPU per frame of the daemon, medians of ``--runs``,
  the ratio to 0 taps; and what the taps got (records and ``tap_dropped``).
- ``--scrapes``: the ``latency`` scenario (10k frames/s, send → handler
  latency) with 200 handlers in the config, without and with a ``GET
  /metrics`` every ``--scrape-every`` seconds: p50/p99 against no scrapes, and
  the scrape's own time as the scraper saw it.

Nothing is asserted: benchmarks report. Usage::

    .venv/bin/python bench/taps.py --quick --runs 3
    .venv/bin/python bench/taps.py --taps 0,1,10 --runs 5
    .venv/bin/python bench/taps.py --scrapes --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import BY_NAME, PYTHON, Proc, Run, Settings, run_once

EXTRA_HANDLERS = 199  # with the counting handler: 200 in /metrics


def _config_with(taps: bool, handlers: int) -> None:
    """Patch the harness's config writer: the API on a Unix socket (and TCP for
    scrapes), room for the taps, ``handlers`` extra handlers."""
    original = harness.wsroute_config

    def config(scenario: Any, port: int, settings: Settings, api_port: int | None = None) -> str:
        text = original(scenario, port, settings, api_port)
        if api_port is not None:
            sock = f"{tempfile.gettempdir()}/wsroute-bench-{os.getpid()}-{api_port}.sock"
            from wsroute.config import ApiSection

            room = "\nmax_taps = 64" if "max_taps" in ApiSection.__dataclass_fields__ else ""
            text = text.replace(
                f'listen = ["127.0.0.1:{api_port}"]',
                f'listen = ["127.0.0.1:{api_port}", "unix:{sock}"]{room}',
            )
        extra = [f'[handlers.extra{i}]\nplugin = "log"\nqueue = 10\n' for i in range(handlers)]
        return text + "\n" + "\n".join(extra)

    harness.wsroute_config = config


def _api_of(proc: Proc) -> tuple[str, int]:
    config = Path(proc.argv[proc.argv.index("-c") + 1]).read_text()
    listen = re.search(r'listen = \["127\.0\.0\.1:(\d+)", "unix:([^"]+)"\]', config)
    assert listen is not None, config
    return listen.group(2), int(listen.group(1))


@contextlib.contextmanager
def _tapping(proc: Proc, count: int, found: dict[str, Any]) -> Iterator[None]:
    """``count`` reading taps from "go" to "done"; what they got lands in ``found``."""
    if count == 0:
        yield
        return
    sock, _ = _api_of(proc)
    with open(os.devnull, "wb") as err:
        reader = Proc(
            [PYTHON, __file__, "--reader", sock, "--clients", str(count)], stderr=err, stdin=True
        )
        try:
            reader.expect("ready", 30)
            yield
        finally:
            reader.send("stop")
            with contextlib.suppress(TimeoutError, RuntimeError):
                found.update(reader.expect("tapped", 30))
            reader.finish()


@contextlib.contextmanager
def _scraping(proc: Proc, every: float, found: dict[str, Any]) -> Iterator[None]:
    """``GET /metrics`` every ``every`` seconds on a thread; the scrape times in ``found``."""
    if every <= 0:
        yield
        return
    _, port = _api_of(proc)
    stop = threading.Event()
    times: list[float] = []
    size = 0

    def scrape() -> None:
        nonlocal size
        while not stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            t0 = time.perf_counter()
            conn.request("GET", "/metrics")
            body = conn.getresponse().read()
            times.append(time.perf_counter() - t0)
            size = len(body)
            conn.close()
            stop.wait(every)

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=15)
        found["scrapes"] = len(times)
        found["scrape_ms_median"] = 1000 * statistics.median(times) if times else None
        found["scrape_ms_max"] = 1000 * max(times) if times else None
        found["metrics_bytes"] = size


def measure_taps(counts: list[int], runs: int, quick: bool, workdir: Path) -> dict[int, Any]:
    _config_with(taps=True, handlers=0)
    settings = Settings(quick=quick, api=True)
    scenario = BY_NAME["small"]
    results: dict[int, Any] = {n: [] for n in counts}
    for i in range(runs):
        for n in counts if i % 2 == 0 else reversed(counts):
            found: dict[str, Any] = {}
            run: Run = run_once(
                "wsroute",
                scenario,
                settings,
                workdir,
                wrap=lambda proc, n=n, found=found: _tapping(proc, n, found),
            )
            results[n].append((run, found))
            print(
                f"taps={n} run {i + 1}: {run.fps:,.0f} frames/s, "
                f"{run.cpu_us_per_frame:.2f} us CPU/frame, taps got {found}",
                file=sys.stderr,
            )
    return results


def measure_scrapes(runs: int, quick: bool, every: float, workdir: Path) -> dict[str, Any]:
    _config_with(taps=False, handlers=EXTRA_HANDLERS)
    settings = Settings(quick=quick, api=True)
    scenario = BY_NAME["latency"]
    results: dict[str, Any] = {"none": [], "scrapes": []}
    for i in range(runs):
        for name in ("none", "scrapes") if i % 2 == 0 else ("scrapes", "none"):
            found: dict[str, Any] = {}
            interval = every if name == "scrapes" else 0.0
            run = run_once(
                "wsroute",
                scenario,
                settings,
                workdir,
                wrap=lambda proc, s=interval, found=found: _scraping(proc, s, found),
            )
            results[name].append((run, found))
            print(f"{name} run {i + 1}: {run.latency} {found}", file=sys.stderr)
    return results


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report_taps(results: dict[int, Any]) -> str:
    base = _median([r.fps for r, _ in results[min(results)]])
    lines = [
        "| tap clients reading | frames/s (median) | vs 0 taps | CPU µs/frame | records a tap got "
        "| dropped a tap |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, runs in results.items():
        fps = _median([r.fps for r, _ in runs])
        cpu = _median([r.cpu_us_per_frame or 0 for r, _ in runs])
        got = _median([f.get("records", 0) / max(1, n) for _, f in runs]) if n else 0
        dropped = _median([f.get("dropped", 0) / max(1, n) for _, f in runs]) if n else 0
        lines.append(
            f"| {n} | {fps:,.0f} | {fps / base:.2f}x | {cpu:.2f} | {got:,.0f} | {dropped:,.0f} |"
        )
    return "\n".join(lines)


def report_scrapes(results: dict[str, Any], every: float) -> str:
    lines = [
        "| 10k frames/s, 200 handlers | p50 µs | p99 µs | p99.9 µs | scrape ms (median, max) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        p50 = _median([r.latency.get("p50_us", 0) for r, _ in runs])
        p99 = _median([r.latency.get("p99_us", 0) for r, _ in runs])
        p999 = _median([r.latency.get("p999_us", 0) for r, _ in runs])
        scrape = ""
        if name == "scrapes":
            med = _median([f["scrape_ms_median"] for _, f in runs if f.get("scrape_ms_median")])
            top = max((f["scrape_ms_max"] for _, f in runs if f.get("scrape_ms_max")), default=0)
            scrape = f"{med:.1f}, {top:.1f}"
        label = "no scrapes" if name == "none" else f"GET /metrics every {every:g} s"
        lines.append(f"| {label} | {p50:.0f} | {p99:.0f} | {p999:.0f} | {scrape} |")
    return "\n".join(lines)


# -- the tap reader process ------------------------------------------------------------------


async def _read_taps(path: str, clients: int) -> None:
    from websockets.asyncio.client import unix_connect

    counts = {"records": 0, "dropped": 0}

    async def one() -> None:
        async with unix_connect(path, "ws://localhost/tap", max_size=None) as ws:
            opened.release()
            async for message in ws:
                if message[:1] == "{" and '"tap_dropped"' in message[:40]:
                    counts["dropped"] += json.loads(message)["count"]
                else:
                    counts["records"] += 1

    opened = asyncio.Semaphore(0)
    tasks = [asyncio.create_task(one()) for _ in range(clients)]
    for _ in range(clients):
        await opened.acquire()
    print(json.dumps({"event": "ready"}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    for task in tasks:
        task.cancel()
    print(json.dumps({"event": "tapped", **counts}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taps", default="0,1,10", help="tap client counts (0,1,10)")
    parser.add_argument("--scrapes", action="store_true", help="the /metrics measurement instead")
    parser.add_argument("--scrape-every", type=float, default=0.1, help="seconds (0.1)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reader", metavar="SOCKET", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reader:
        asyncio.run(_read_taps(args.reader, args.clients))
        return 0
    with tempfile.TemporaryDirectory(prefix="wsroute-bench-taps-") as folder:
        if args.scrapes:
            found = measure_scrapes(args.runs, args.quick, args.scrape_every, Path(folder))
            print(report_scrapes(found, args.scrape_every))
        else:
            counts = [int(n) for n in args.taps.split(",")]
            print(report_taps(measure_taps(counts, args.runs, args.quick, Path(folder))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
