"""A worker's CPU per frame: ``.venv/bin/python bench/redis_worker.py [--pack 16]``.

The worker side of ``bench/scaleout.py`` alone, without the ingest daemon and
the upstream sharing the cores: the driver fills a stream on a private
redis-server (``scaleout.RedisProcess``: loopback, AOF ``everysec``) with
``--entries`` frames of the scale-out benchmark's kind (a ``<i`` header and a
small JSON body, written as the ``redis`` sink writes them: one entry per frame,
or ``--pack`` frames per entry), then starts one worker ``wsroute run`` (a
``redis-stream`` source with the ``exchange`` codec, routed to the counting
handler ``benchcount:Count``) and reads its CPU time from ``/proc/PID/stat``
twice: when the consumer group appears (start-up done, the first read under
way) and when every entry is acknowledged. The difference over the frames is
the figure: a worker's cost per frame, start-up excluded.

Each run uses a stream of its own; ``--runs`` runs (3), median and minimum
printed (the minimum is the run other jobs of a shared machine disturbed least).
``--source module:Class`` with ``--plugin-path DIR`` measures another source
(a copy of older code, for an A/B in one sitting); ``--profile FILE`` runs the
worker under cProfile and stops it with SIGTERM, so the profile is written.
Nothing is saved: ``scaleout.py``'s worker rows are the recorded figures.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CLK_TCK, PLUGINS, PYTHON
from scaleout import CODEC, RedisProcess

from wsroute import Message
from wsroute.plugins.redis.entry import encode_entry_bytes, pack_entry_bytes

WORKER = """
[daemon]
log_level = "warning"
shutdown_timeout = "5s"
plugin_paths = {paths}

[sources.ticks]
type = "{source}"
url = "{url}"
stream = "{stream}"
consumer = "w1"
codec = "exchange"
{codec}
[routes.ticks]
key = 1
handlers = ["count"]

[handlers.count]
plugin = "benchcount:Count"
"""

FILL_BATCH = 5_000  # XADDs per pipeline while filling


def fill(server: RedisProcess, stream: str, entries: int, pack: int) -> None:
    """``entries`` frames into ``stream``, as the sink writes them (``pack`` per entry)."""
    body = json.dumps({"opcode": 1, "px": 1.5, "qty": 3, "sym": "ABC", "pad": "x" * 40})
    raw = struct.pack("<i", 1) + body.encode()
    pipe = server.client.pipeline(transaction=False)
    frames: list[dict[str, bytes]] = []
    for seq in range(1, entries + 1):
        message = Message("up", 1, None, raw=raw, seq=seq, received_at=time.time())
        frames.append(encode_entry_bytes(message))
        if len(frames) == pack or seq == entries:
            fields = frames[0] if len(frames) == 1 else pack_entry_bytes(frames)
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
            frames = []
        if len(pipe) >= FILL_BATCH:
            pipe.execute()
    pipe.execute()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def one_run(server: RedisProcess, workdir: Path, n: int, opts: argparse.Namespace) -> float:
    """CPU µs per frame of one worker draining a stream of ``opts.entries`` frames."""
    stream = f"{{worker.{n}}}:in"
    fill(server, stream, opts.entries, opts.pack)
    entries = server.client.xlen(stream)
    paths = [str(PLUGINS), *opts.plugin_path]
    config = workdir / f"worker{n}.toml"
    config.write_text(
        WORKER.format(
            paths=json.dumps(paths),
            source=opts.source,
            url=server.url,
            stream=stream,
            codec=CODEC,
        )
    )
    profile = ["-m", "cProfile", "-o", opts.profile] if opts.profile else []
    argv = [PYTHON, *profile, "-m", "wsroute.cli", "run", "-c", str(config)]
    errors = (workdir / "worker.err").open("ab")
    worker = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        budget = time.monotonic() + 60 + opts.entries / 5_000
        start = None
        while True:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited ({worker.returncode}): see {errors.name}")
            if time.monotonic() > budget:
                raise TimeoutError("the worker did not finish within the time budget")
            groups = server.client.xinfo_groups(stream)
            if groups and start is None:
                start = cpu_seconds(worker.pid)
            if groups and groups[0]["pending"] == 0 and groups[0]["entries-read"] == entries:
                end = cpu_seconds(worker.pid)
                break
            time.sleep(0.005)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        errors.close()
    return (end - start) / opts.entries * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=200_000, help="frames per run (200,000)")
    p.add_argument("--pack", type=int, default=1, help="frames per entry (1)")
    p.add_argument("--runs", type=int, default=3, help="runs (3)")
    p.add_argument("--source", default="redis-stream", help="the source type to measure")
    p.add_argument("--plugin-path", action="append", default=[], help="for --source")
    p.add_argument("--profile", default="", help="write the worker's cProfile here (1 run)")
    opts = p.parse_args()
    if opts.profile:
        opts.runs = 1
    with tempfile.TemporaryDirectory(prefix="wsroute-worker-") as folder:
        workdir = Path(folder)
        server = RedisProcess(workdir)
        try:
            results = [one_run(server, workdir, n, opts) for n in range(opts.runs)]
        finally:
            server.stop()
    shown = ", ".join(f"{r:.1f}" for r in results)
    print(
        f"{opts.source}, pack = {opts.pack}, {opts.entries:,} frames: CPU per frame "
        f"median {statistics.median(results):.1f} µs, min {min(results):.1f} µs ({shown})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
