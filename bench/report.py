"""Medians, ratios, the machine, and the Markdown tables of ``bench/run.py``."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import RESULTS, ROOT, Run, Scenario, Settings, source_digest

NAN = float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else NAN


def summarize(scenario: Scenario, pairs: list[tuple[Run, Run]]) -> dict[str, Any]:
    """Medians per client, and ratios wsroute/baseline as the median of per-run ratios."""
    out: dict[str, Any] = {
        "scenario": scenario.name,
        "title": scenario.title,
        "runs": len(pairs),
        "paced": scenario.rate > 0,
    }
    for index, client in ((0, "baseline"), (1, "wsroute")):
        runs = [pair[index] for pair in pairs]
        cpu = [r.cpu_us_per_frame for r in runs if r.cpu_us_per_frame is not None]
        s: dict[str, Any] = {
            "fps": median([r.fps for r in runs]),
            "cpu_us_per_frame": median(cpu),
            "cpu_percent": median([r.cpu_percent for r in runs if r.cpu_percent is not None]),
            "peak_rss_mib": median([r.peak_rss_mib for r in runs]),
            "rss_connected_mib": median([r.rss_connected_mib for r in runs]),
            "rss_end_mib": median([r.rss_end_mib for r in runs]),
        }
        if scenario.latency:
            for key in ("p50_us", "p99_us", "p999_us", "max_us"):
                s[key] = median([r.latency.get(key, NAN) for r in runs])
        if scenario.duration and not scenario.idle:
            s["handled_per_s"] = median([r.handled_per_s or 0.0 for r in runs])
            s["sent_per_s"] = median([r.sent_per_s or 0.0 for r in runs])
            s["rss_growth_mib"] = median([r.rss_growth_mib or 0.0 for r in runs])
        out[client] = s
    ratio: dict[str, float] = {}
    if not scenario.duration:
        ratio["fps"] = median([w.fps / b.fps for b, w in pairs if b.fps])
        # Baseline CPU over wsroute CPU: the same sense as the throughput ratio,
        # and less sensitive to a noisy neighbour than wall time.
        ratio["cpu"] = median(
            [
                b.cpu_us_per_frame / w.cpu_us_per_frame
                for b, w in pairs
                if b.cpu_us_per_frame and w.cpu_us_per_frame
            ]
        )
    ratio["peak_rss"] = median([w.peak_rss_mib / b.peak_rss_mib for b, w in pairs])
    if scenario.latency:
        for key in ("p50_us", "p99_us", "p999_us"):
            ratio[key] = median(
                [w.latency[key] / b.latency[key] for b, w in pairs if b.latency.get(key)]
            )
    out["ratio"] = ratio
    out["sources"] = sorted({w.source for _, w in pairs})
    out["raw"] = [[asdict(b), asdict(w)] for b, w in pairs]
    return out


def machine() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for dist in ("wsroute", "websockets", "anyio", "msgspec", "structlog", "uvloop"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    commit = None
    with contextlib.suppress(Exception):
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        commit = head.stdout.decode().strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "daemon", "plugins"], capture_output=True
        )
        if status.stdout.strip():
            commit += " + uncommitted changes in daemon/ or plugins/"
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit,
        "source_digest": source_digest(),
        "load_at_start": load,
        "timer_jitter_us": timer_jitter(),
    }


def timer_jitter(sleeps: int = 5_000) -> dict[str, float]:
    """How late this machine wakes a process: ``time.sleep(100 µs)`` overshoot, in µs.

    The latency scenario cannot be read without it: on a shared VM the
    scheduler alone can hold a process back for a millisecond, and then the bare
    loop's p99 is as far off as wsroute's. ~1 s.
    """
    late = []
    for _ in range(sleeps):
        t = time.perf_counter_ns()
        time.sleep(0.0001)
        late.append((time.perf_counter_ns() - t) / 1e3 - 100)
    late.sort()
    return {
        q: round(late[min(len(late) - 1, int(len(late) * f))], 1)
        for q, f in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999))
    }


def _f(value: float | None, fmt: str) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    return format(value, fmt)


def _div(a: float, b: float) -> float:
    return a / b if b else NAN


def table(results: list[dict[str, Any]]) -> str:
    """The results as Markdown tables (readable on a terminal too)."""
    out: list[str] = []
    rows = [r for r in results if "fps" in r["ratio"] and not r["paced"]]
    if rows:
        out += [
            "| scenario | baseline frames/s | wsroute frames/s | ratio | CPU µs/frame"
            " baseline | CPU µs/frame wsroute | CPU ratio | peak RSS MiB baseline"
            " | peak RSS MiB wsroute |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            b, w, q = r["baseline"], r["wsroute"], r["ratio"]
            out.append(
                f"| {r['title']} | {_f(b['fps'], ',.0f')} | {_f(w['fps'], ',.0f')} "
                f"| **{_f(q['fps'], '.2f')}x** | {_f(b['cpu_us_per_frame'], '.2f')} "
                f"| {_f(w['cpu_us_per_frame'], '.2f')} | {_f(q['cpu'], '.2f')}x "
                f"| {_f(b['peak_rss_mib'], '.1f')} | {_f(w['peak_rss_mib'], '.1f')} |"
            )
    for r in results:
        if "p99_us" not in r["ratio"]:
            continue
        out += [
            "",
            f"| {r['title']}: send → handler, µs | p50 | p99 | p99.9 | max | CPU µs/frame |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for client in ("baseline", "wsroute"):
            s = r[client]
            out.append(
                f"| {client} | {_f(s['p50_us'], '.0f')} | {_f(s['p99_us'], '.0f')} "
                f"| {_f(s['p999_us'], '.0f')} | {_f(s['max_us'], '.0f')} "
                f"| {_f(s['cpu_us_per_frame'], '.1f')} |"
            )
        q = r["ratio"]
        out.append(
            f"| ratio wsroute/baseline | {_f(q['p50_us'], '.2f')}x | {_f(q['p99_us'], '.2f')}x "
            f"| {_f(q['p999_us'], '.2f')}x | | |"
        )
    slow = [r for r in results if "handled_per_s" in r["baseline"]]
    if slow:
        out += [
            "",
            "| slow handler, upstream flooding | client | handled/s | upstream sent/s"
            " | RSS growth, 2nd half (MiB) | RSS at end (MiB) | peak RSS (MiB) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in slow:
            for client in ("baseline", "wsroute"):
                s = r[client]
                out.append(
                    f"| {r['title']} | {client} | {_f(s['handled_per_s'], ',.0f')} "
                    f"| {_f(s['sent_per_s'], ',.0f')} | {_f(s['rss_growth_mib'], '+.2f')} "
                    f"| {_f(s['rss_end_mib'], '.1f')} | {_f(s['peak_rss_mib'], '.1f')} |"
                )
    out += _memory_rows(results)
    return "\n".join(out)


def _memory_rows(results: list[dict[str, Any]]) -> list[str]:
    by = {r["scenario"]: r for r in results}
    idle, many = by.get("idle"), by.get("conn100")
    if idle is None and many is None:
        return []
    out = ["", "| memory and idle cost | baseline | wsroute | ratio |", "|---|---:|---:|---:|"]
    if idle is not None:
        b, w = idle["baseline"], idle["wsroute"]
        out.append(
            f"| idle RSS, 1 connection (MiB) | {_f(b['rss_end_mib'], '.1f')} "
            f"| {_f(w['rss_end_mib'], '.1f')} "
            f"| {_f(_div(w['rss_end_mib'], b['rss_end_mib']), '.2f')}x |"
        )
        out.append(
            f"| idle CPU, 1 connection (% of a core; 10 ms ticks) "
            f"| {_f(b['cpu_percent'], '.2f')} | {_f(w['cpu_percent'], '.2f')} | |"
        )
    if many is not None:
        b, w = many["baseline"], many["wsroute"]
        out.append(
            f"| RSS with 100 connections open, before frames (MiB) "
            f"| {_f(b['rss_connected_mib'], '.1f')} | {_f(w['rss_connected_mib'], '.1f')} "
            f"| {_f(_div(w['rss_connected_mib'], b['rss_connected_mib']), '.2f')}x |"
        )
        out.append(
            f"| peak RSS, 100 connections x 100 frames/s (MiB) | {_f(b['peak_rss_mib'], '.1f')} "
            f"| {_f(w['peak_rss_mib'], '.1f')} | {_f(many['ratio']['peak_rss'], '.2f')}x |"
        )
        out.append(
            f"| CPU per frame, 100 connections (µs) | {_f(b['cpu_us_per_frame'], '.1f')} "
            f"| {_f(w['cpu_us_per_frame'], '.1f')} | {_f(1 / many['ratio']['cpu'], '.2f')}x |"
        )
        if idle is not None:
            pb = (b["rss_connected_mib"] - idle["baseline"]["rss_connected_mib"]) / 99 * 1024
            pw = (w["rss_connected_mib"] - idle["wsroute"]["rss_connected_mib"]) / 99 * 1024
            out.append(
                f"| RSS per extra connection, 1 → 100 (KiB) | {_f(pb, '.0f')} | {_f(pw, '.0f')} "
                f"| {_f(_div(pw, pb), '.2f')}x |"
            )
    return out


def jitter_line(info: dict[str, Any]) -> str:
    """The results header line on the machine's timer jitter (see :func:`timer_jitter`)."""
    j = info.get("timer_jitter_us")
    if not j:
        return "- timer jitter: not measured"
    return (
        f"- timer jitter (how late `time.sleep(100 µs)` wakes, µs): p50 {j['p50']:.0f}, "
        f"p99 {j['p99']:.0f}, p99.9 {j['p99.9']:.0f} — the floor under the latency figures"
    )


def write_results(
    results: list[dict[str, Any]], info: dict[str, Any], settings: Settings, command: str
) -> Path:
    """Write ``bench/results/<date>-<time>[-variant].md`` and ``.json``; return the .md path."""
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    suffix = ("-quick" if settings.quick else "") + ("-uvloop" if settings.uvloop else "")
    suffix += "".join(f"-{name}" for name in settings.experiments)
    base = RESULTS / f"{stamp}{suffix}"
    document = {"machine": info, "settings": asdict(settings), "results": results}
    base.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
    v = info["versions"]
    runs = results[0]["runs"] if results else 0
    lines = [
        f"# wsroute benchmark, {info['date']}",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}, "
        f"load average {info['load_at_start']} at start, {info.get('load_at_end', '?')} at end "
        "(other jobs share the machine)",
        jitter_line(info),
        f"- Python {info['python']}; wsroute {v['wsroute']} (commit {info['commit']}; "
        f"sha256 of daemon/*.py: {info['source_digest']}), "
        f"websockets {v['websockets']}, anyio {v['anyio']}, msgspec {v['msgspec']}, "
        f"structlog {v['structlog']}, uvloop {v['uvloop']}",
        "- wsroute as it is"
        if not settings.experiments
        else f"- experiments patched into wsroute: {', '.join(settings.experiments)}",
        f"- event loop: {'uvloop, both clients' if settings.uvloop else 'asyncio'}; "
        f"{runs} runs per scenario, {'quick' if settings.quick else 'full'} sizes; "
        "figures are medians, a ratio is the median of the per-run ratios",
        f"- command: `{command}`",
        "",
        table(results),
        "",
    ]
    sources = sorted({digest for r in results for digest in r.get("sources", [])})
    if len(sources) > 1:
        changed = ", ".join(r["scenario"] for r in results if len(r.get("sources", [])) > 1)
        lines.insert(
            -3,
            f"- **daemon/ changed during this suite** (digests {', '.join(sources)}"
            f"{'; within: ' + changed if changed else ''}): compare with care",
        )
    path = base.with_suffix(".md")
    path.write_text("\n".join(lines))
    return path
