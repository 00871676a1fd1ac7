"""The benchmark suite still runs: its quickest form, one run per scenario.

Nothing here asserts a speed (bench/README.md: benchmarks are not timed
tests). What is checked is that ``bench/run.py`` — the upstream process, the
bare websockets loop, the real ``wsroute run`` with its generated config, the
probe and the experiments — works at every commit and prints every table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"

pytestmark = pytest.mark.slow


def bench(*args: str, timeout: float) -> str:
    result = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--runs", "1", "--no-save", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.mark.timeout(400)
def test_every_scenario_runs_and_is_reported_beside_the_bare_loop() -> None:
    out = bench(timeout=380)
    for row in (
        "| small binary frames, 1 handler |",
        "| small binary frames, fan-out to 3 handlers |",
        "| JSON text frames, 1 handler |",
        '| small binary frames, compression = "deflate" |',
        "| 4 KiB frames, handler does not read the body |",
        "| 4 KiB frames, body not read, validate = false |",
        "| 4 KiB frames, handler reads the body |",
        "| baseline |",
        "| wsroute |",
        "overflow=block | wsroute |",
        "overflow=drop-oldest | wsroute |",
        "| idle RSS, 1 connection (MiB) |",
        "| peak RSS, 100 connections x 100 frames/s (MiB) |",
        "| latency at 10k frames/s, fan-out to 3 handlers: send → handler, µs |",
    ):
        assert row in out, row
    assert "picows" not in out
    assert "13 scenarios x 1 runs" in out


@pytest.mark.timeout(60)
def test_the_probe_counts_the_hot_path() -> None:
    out = bench("--only", "small", "--probe", timeout=50)
    assert "frames per reader wake-up" in out
    assert "offers" in out


@pytest.mark.timeout(60)
def test_an_experiment_runs_and_names_itself() -> None:
    out = bench("--only", "small", "--experiment", "high_water16", timeout=50)
    assert "high_water16" in out
    assert "| small binary frames, 1 handler |" in out


def test_the_micro_benchmarks_time_the_hot_path_pieces() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "micro.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "StructCodec.decode, small binary frame" in result.stdout
    assert "wsroute per frame, no websockets" in result.stdout


def test_the_newest_result_names_the_machine_versions_commit_and_date() -> None:
    # The figures in the READMEs come from the newest committed result.
    results = sorted((ROOT / "bench" / "results").glob("20*.json"))
    assert results, "bench/results/ holds no run"
    machine = json.loads(results[-1].read_text())["machine"]
    for key in ("date", "cpu", "cores", "kernel", "python", "commit"):
        assert machine.get(key), key
    assert machine["versions"].get("websockets")
    assert machine["versions"].get("wsroute")
