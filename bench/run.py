"""Run the wsroute benchmark suite and print a table: ``.venv/bin/python bench/run.py [--quick]``.

Every scenario (see ``harness.SCENARIOS`` and bench/README.md) runs the bare
``websockets`` receive loop and the real ``wsroute run`` against the same
upstream process, ``--runs`` times each (5; ``--quick``: 3 with smaller sizes),
alternating which goes first. The table shows medians, and each ratio is the
median of the per-run ratios wsroute/baseline. Results are written to
``bench/results/<date>-<time>.md`` and ``.json`` with the machine and versions.

Diagnostics, not part of the table:

- ``--experiment a,b``: patch candidate changes into wsroute (bench/experiment.py);
- ``--uvloop``: both clients on uvloop (wsroute through ``[daemon] event_loop = "uvloop"``);
- ``--api``: wsroute with ``[daemon.api]`` listening on a loopback port, nobody scraping
  or tapping (compare with the same run without it);
- ``--profile py-spy|cprofile``: one profiled wsroute run of a scenario, summarized;
- ``--probe``: one wsroute run with counters around the hot path (bench/probe.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    BY_NAME,
    CODE_EXPERIMENTS,
    CONFIG_EXPERIMENTS,
    PLUGINS,
    PYTHON,
    RESULTS,
    SCENARIOS,
    Proc,
    Run,
    Scenario,
    Settings,
    run_once,
)
from profile_report import summarize_cprofile, summarize_pyspy
from report import jitter_line, machine, summarize, table, write_results


def run_suite(
    settings: Settings, scenarios: list[Scenario], runs: int, keep: bool
) -> list[dict[str, Any]]:
    """Every scenario, ``runs`` pairs of (baseline, wsroute); progress on stderr."""
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="wsroute-bench-"))
    try:
        for scenario in scenarios:
            pairs: list[tuple[Run, Run]] = []
            for rep in range(runs):
                order = ("baseline", "wsroute") if rep % 2 == 0 else ("wsroute", "baseline")
                got = {client: run_once(client, scenario, settings, workdir) for client in order}
                pairs.append((got["baseline"], got["wsroute"]))
                b, w = pairs[-1]
                print(f"  {scenario.name} #{rep + 1}: {_brief(b)} | {_brief(w)}", file=sys.stderr)
            results.append(summarize(scenario, pairs))
    finally:
        if keep:
            print(f"work files kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def _brief(r: Run) -> str:
    if r.fps:
        extra = f" p99={r.latency['p99_us']:.0f}us" if r.latency else ""
        return (
            f"{r.client} {r.fps:,.0f}/s cpu={r.cpu_us_per_frame:.2f}us "
            f"rss={r.peak_rss_mib:.1f}MiB{extra}"
        )
    if r.handled_per_s is not None:
        return (
            f"{r.client} handled={r.handled_per_s:,.0f}/s sent={r.sent_per_s:,.0f}/s "
            f"growth={r.rss_growth_mib}MiB peak={r.peak_rss_mib:.1f}MiB"
        )
    return f"{r.client} rss={r.rss_end_mib:.1f}MiB cpu={r.cpu_percent:.2f}%"


def profile(settings: Settings, scenario: Scenario, tool: str) -> None:
    """One wsroute run under py-spy (attached from "go" to "done") or cProfile."""
    RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="wsroute-prof-"))
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    variant = "".join(f"-{name}" for name in settings.experiments)
    try:
        if tool == "py-spy":
            out = RESULTS / f"profile-{scenario.name}{variant}-{stamp}.pyspy.txt"
            spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")

            @contextlib.contextmanager
            def attach(proc: Proc) -> Iterator[None]:
                argv = [spy, "record", "--pid", str(proc.pid), "--rate", "1000"]
                argv += ["--format", "raw", "--output", str(out)]
                recorder = subprocess.Popen(
                    argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                time.sleep(1.0)  # py-spy needs a moment to attach
                try:
                    yield
                finally:
                    recorder.send_signal(signal.SIGINT)
                    recorder.wait(30)

            run = run_once("wsroute", scenario, settings, workdir, wrap=attach)
            print(f"profiled run: {run.fps:,.0f} frames/s (py-spy slows it); raw stacks: {out}")
            print(summarize_pyspy(out))
        else:
            out = RESULTS / f"profile-{scenario.name}{variant}-{stamp}.prof"
            argv = [PYTHON, "-m", "cProfile", "-o", str(out), "-m", "wsroute.cli"]
            argv += ["run", "-c", "{config}"]
            run = run_once("wsroute", scenario, settings, workdir, argv=argv)
            print(f"profiled run: {run.fps:,.0f} frames/s (cProfile slows it a lot); stats: {out}")
            print(summarize_cprofile(out))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def probe(settings: Settings, scenario: Scenario) -> None:
    """One wsroute run through ``bench/probe.py``; print its counters per frame."""
    workdir = Path(tempfile.mkdtemp(prefix="wsroute-probe-"))
    out = workdir / "probe.json"
    os.environ["WSROUTE_PROBE_OUT"] = str(out)
    try:
        run = run_once("wsroute", scenario, settings, workdir)
        got = json.loads(out.read_text())
    finally:
        del os.environ["WSROUTE_PROBE_OUT"]
        shutil.rmtree(workdir, ignore_errors=True)
    frames = max(run.frames, 1)
    print(f"{scenario.name}: {run.fps:,.0f} frames/s under the probe, {frames:,} frames")
    for key in ("offers", "wakeups", "inline", "reader_waits", "blocked"):
        print(f"  {key:>13}: {got[key]:>10,}  ({got[key] / frames:.4f} per frame)")
    if got["wakeups"]:
        print(f"  messages per worker wake-up: {got['offers'] / got['wakeups']:.1f}")
    if got["reader_waits"]:
        queued = got["reader_gets"] - got["inline"]
        print(f"  queued frames per reader wake-up: {queued / got['reader_waits']:.1f}")
    print(f"  handler queue length at offer: max {got['queue_max']}, {got['queue_hist']}")
    for gen, entry in got["gc"].items():
        print(f"  gc gen{gen}: {entry['count']} collections, {entry['seconds'] * 1000:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    every = ", ".join(list(CONFIG_EXPERIMENTS) + list(CODE_EXPERIMENTS))
    p = argparse.ArgumentParser(description="Run the wsroute benchmark suite and print a table.")
    p.add_argument("--quick", action="store_true", help="3 runs, smaller sizes (~2 min)")
    p.add_argument("--runs", type=int, default=None, help="runs per scenario (5; quick: 3)")
    p.add_argument("--only", default="", help=f"comma-separated scenarios: {', '.join(BY_NAME)}")
    p.add_argument("--experiment", default="", help=f"candidate changes to wsroute: {every}")
    p.add_argument("--uvloop", action="store_true", help="run both clients on uvloop")
    p.add_argument(
        "--api", action="store_true", help="wsroute with [daemon.api] on, idle (TCP loopback)"
    )
    p.add_argument("--profile", choices=["py-spy", "cprofile"], help="profile one wsroute run")
    p.add_argument("--probe", action="store_true", help="one wsroute run with hot-path counters")
    p.add_argument("--keep", action="store_true", help="keep the work folder (configs, stderr)")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    opts = p.parse_args(argv)
    runs = opts.runs or (3 if opts.quick else 5)
    names = [n for n in opts.only.split(",") if n]
    if unknown := [n for n in names if n not in BY_NAME]:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    experiments = tuple(n for n in opts.experiment.split(",") if n)
    if bad := [n for n in experiments if n not in CONFIG_EXPERIMENTS and n not in CODE_EXPERIMENTS]:
        p.error(f"unknown experiment(s) {', '.join(bad)}; known: {every}")
    if opts.uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            p.error("--uvloop: uvloop is not installed (.venv/bin/pip install uvloop)")
    settings = Settings(quick=opts.quick, uvloop=opts.uvloop, experiments=experiments, api=opts.api)
    os.chmod(PLUGINS, 0o755)  # wsroute refuses group/other-writable plugin folders
    scenarios = [BY_NAME[n] for n in names] if names else SCENARIOS
    if opts.profile:
        profile(settings, scenarios[0] if names else BY_NAME["small"], opts.profile)
        return 0
    if opts.probe:
        settings.probe = True
        for scenario in scenarios if names else [BY_NAME["small"]]:
            probe(settings, scenario)
        return 0
    info = machine()
    started = time.monotonic()
    results = run_suite(settings, scenarios, runs, opts.keep)
    print()
    if settings.experiments:
        print(f"experiments patched into wsroute: {', '.join(settings.experiments)}\n")
    if settings.api:
        print("wsroute ran with [daemon.api] listening on 127.0.0.1 (idle)\n")
    print(table(results))
    print(f"\n{len(scenarios)} scenarios x {runs} runs in {time.monotonic() - started:.0f} s")
    print(jitter_line(info).removeprefix("- "))
    with open("/proc/loadavg") as f:
        info["load_at_end"] = f.read().split()[0]
    if not opts.no_save:
        command = " ".join([".venv/bin/python bench/run.py", *sys.argv[1:]])
        path = write_results(results, info, settings, command)
        print(f"results: {path} (and .json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
