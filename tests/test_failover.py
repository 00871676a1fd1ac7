"""The outage rule end to end, on real engines really taken away (docs/plugins.md).

A full disk under ``jsonl`` (a small tmpfs filled up, then freed), a NATS
permissions violation (a refusal: that message is dead-lettered while the rest
flow), and SIGTERM to a ``wsroute run`` whose Redis is down: it exits within
``shutdown_timeout``, the held messages are in the dead letters with reason
``shutdown``, and ``wsroute replay`` delivers them once Redis is back. Every
delivery key is at its default unless the test is about it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from wsroute.testing import ScriptedUpstream, free_port, wait_until

from conftest import need, tool_path
from redis_helpers import RedisServer

NATS_SERVER = tool_path("nats-server")
needs_nats = need("nats-server")
needs_redis = need("redis-server")
WSROUTE = str(Path(sys.executable).with_name("wsroute"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _spawn(argv: list[str], log: Path | None) -> subprocess.Popen[bytes]:
    """Start a process (its output to ``log``, or nowhere); the test stops it."""
    if log is None:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=out)


def _tick(n: int, kind: str = "tick", pad: int = 0) -> str:
    return json.dumps({"type": kind, "n": n, **({"pad": "x" * pad} if pad else {})})


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# --------------------------------------------------------------------------- jsonl, a full disk


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, timeout=30)


def fill(path: Path) -> None:
    """Write to ``path`` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(100_000):  # bounded: a 64 KiB tmpfs takes 16 pages
            try:
                os.write(fd, b"x" * 4096)
            except OSError as exc:
                full = exc.errno
                break
        else:
            raise AssertionError("the file system never filled up")
    finally:
        os.close(fd)
    assert full == errno.ENOSPC


JSONL = """
[connections.up]
url = "${WSROUTE_UPSTREAM}"
codec = "json"
ping_interval = 0

[routes.all]
handlers = ["archive"]

[handlers.archive]
plugin = "jsonl"
path = "${DISK}/archive.jsonl"
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI is root)")
@pytest.mark.anyio
async def test_jsonl_waits_out_a_full_disk_and_loses_nothing(
    tmp_path: Path, wsroute_daemon: Any
) -> None:
    upstream = ScriptedUpstream()
    with small_tmpfs(tmp_path / "disk", "64k") as disk, capture_logs() as logs:
        filler = disk / "filler"
        env = {"DISK": str(disk)}
        async with wsroute_daemon(JSONL, upstream=upstream, environ=env) as daemon:
            await daemon.wait_until(lambda: upstream.connected == 1)
            # Lines of 3 KB: each one after the first needs a page of its own.
            await upstream.send(_tick(1, pad=3000))
            await daemon.wait_until(lambda: daemon.stats("archive")["handled"] == 1)
            fill(filler)
            for n in range(2, 6):
                await upstream.send(_tick(n, pad=3000))
            await daemon.wait_until(lambda: daemon.stats("archive")["outage"] == 1)
            await anyio.sleep(0.3)  # a few tries against the full disk
            held = daemon.stats("archive")
            filler.unlink()  # space again
            await daemon.wait_until(lambda: daemon.stats("archive")["handled"] == 5, 10)
            after = daemon.stats("archive")
        written = _lines(disk / "archive.jsonl")
    assert [r["body"]["n"] for r in written] == [1, 2, 3, 4, 5]  # each once, whole lines
    assert held["handled"] == 1
    assert held["in_flight"] == 4
    assert after["failures"] == 0
    assert after["dead_lettered"] == 0
    assert [e["event"] for e in logs if e["event"].startswith("jsonl_un")] == ["jsonl_unavailable"]
    assert next(e for e in logs if e["event"] == "jsonl_recovered")["down_for"] > 0.3


# --------------------------------------------------------------------------- NATS, a refusal

NATS_AUTH = """
listen: 127.0.0.1:{port}
authorization {{
  users = [
    {{ user: "ingest", password: "pw",
       permissions: {{ publish: {{ allow: ["ticks.>"] }}, subscribe: ["_INBOX.>", "ticks.>"] }} }}
  ]
}}
"""

NATS_ROUTES = """
[daemon]
dead_letter = "dlq"

[connections.up]
url = "${WSROUTE_UPSTREAM}"
codec = "json"
ping_interval = 0

[routes.ticks]
key = "tick"
handlers = ["ticks"]

[routes.secret]
key = "secret"
handlers = ["secret"]

[handlers.ticks]
plugin = "nats"
url = "nats://ingest:pw@127.0.0.1:${NATS_PORT}"
subject = "ticks.in"

[handlers.secret]
plugin = "nats"
url = "nats://ingest:pw@127.0.0.1:${NATS_PORT}"
subject = "secret.in"

[handlers.dlq]
plugin = "jsonl"
path = "${WSROUTE_TMP}/dead.jsonl"
"""


@needs_nats
@pytest.mark.anyio
async def test_a_nats_permissions_violation_dead_letters_that_message(
    tmp_path: Path, wsroute_daemon: Any
) -> None:
    import nats

    assert NATS_SERVER is not None
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(NATS_AUTH.format(port=port))
    server = _spawn([NATS_SERVER, "-c", str(conf)], None)
    try:
        nc = None
        for _ in range(200):
            with contextlib.suppress(Exception):
                nc = await nats.connect(f"nats://ingest:pw@127.0.0.1:{port}", allow_reconnect=False)
                break
            await anyio.sleep(0.05)
        assert nc is not None, "nats-server did not start"
        got: list[int] = []

        async def seen(msg: Any) -> None:
            got.append(json.loads(msg.data)["body"]["n"])

        await nc.subscribe("ticks.in", cb=seen)
        await nc.flush()
        upstream = ScriptedUpstream()
        env = {"NATS_PORT": str(port)}
        async with wsroute_daemon(NATS_ROUTES, upstream=upstream, environ=env) as daemon:
            await daemon.wait_until(lambda: upstream.connected == 1)
            await daemon.wait_until(lambda: daemon.handler("secret").connected)
            await upstream.send(_tick(1))
            await upstream.send(_tick(2, "secret"))
            for n in range(3, 6):
                await upstream.send(_tick(n))
            await daemon.wait_until(lambda: daemon.stats("secret")["dead_lettered"] == 1, 10)
            await daemon.wait_until(lambda: daemon.stats("ticks")["handled"] == 4)
            secret = daemon.stats("secret")
            dead = _lines(daemon.tmp_path / "dead.jsonl")
        await wait_until(lambda: len(got) == 4, 5)
        await nc.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert sorted(got) == [1, 3, 4, 5]  # the rest flowed
    assert [(d["body"]["n"], d["reason"]) for d in dead] == [(2, "handler_error")]
    assert "permissions violation" in dead[0]["error"].lower()
    assert secret["outage"] == 0  # a refusal, not an outage
    assert secret["failures"] == 4  # the first attempt and the default 3 retries


# --------------------------------------------------------------------------- SIGTERM in an outage

SIGTERM_CONFIG = """
[daemon]
log_format = "json"
shutdown_timeout = "2s"
dead_letter = "dlq"

[connections.up]
url = "ws://127.0.0.1:{upstream}/"
codec = "json"
ping_interval = 0

[routes.all]
handlers = ["ticks"]

[handlers.ticks]
plugin = "redis"
url = "{redis}"
stream = "ticks"

[handlers.dlq]
plugin = "jsonl"
path = "{folder}/dead.jsonl"
"""


def _events(log: Path, name: str) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [e for e in (json.loads(x) for x in lines if x.startswith("{")) if e["event"] == name]


@needs_redis
@pytest.mark.anyio
async def test_sigterm_in_an_outage_dead_letters_what_is_held_and_replay_delivers_it(
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "redis", persistent=True)
    redis.start()
    upstream = ScriptedUpstream(port=free_port())
    config = tmp_path / "wsroute.toml"
    config.write_text(
        SIGTERM_CONFIG.format(upstream=upstream.port, redis=redis.url, folder=tmp_path)
    )
    log = tmp_path / "daemon.log"
    try:
        async with upstream.serve():
            proc = _spawn([WSROUTE, "run", "-c", str(config)], log)
            try:
                await wait_until(lambda: upstream.connections == 1, 20)
                client = aioredis.Redis.from_url(redis.url)
                await upstream.send(_tick(1))
                await wait_until(lambda: bool(_events(log, "connected")), 10)
                for _ in range(100):
                    if await client.xlen("ticks") == 1:
                        break
                    await anyio.sleep(0.05)
                await client.aclose()
                await anyio.to_thread.run_sync(redis.stop)
                for n in (2, 3, 4):
                    await upstream.send(_tick(n))
                await wait_until(lambda: bool(_events(log, "redis_unavailable")), 10)
                began = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                code = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=20))
                took = time.monotonic() - began
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
        assert code == 0, log.read_text()[-3000:]
        assert took < 2.0 + 1.0  # shutdown_timeout, and the process's own exit
        dead = _lines(tmp_path / "dead.jsonl")
        assert [(d["body"]["n"], d["reason"], d["handler"]) for d in dead] == [
            (2, "shutdown", "ticks"),
            (3, "shutdown", "ticks"),
            (4, "shutdown", "ticks"),
        ]
        [totals] = [e for e in _events(log, "delivery_totals") if e["handler"] == "ticks"]
        assert (totals["handled"], totals["dead_lettered"], totals["lost"]) == (1, 3, 0)

        await anyio.to_thread.run_sync(redis.start)  # the engine is back
        replayed = tmp_path / "replay.jsonl"
        (tmp_path / "dead.jsonl").rename(replayed)
        result = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [WSROUTE, "replay", "-c", str(config), str(replayed)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        )
        assert result.returncode == 0, result.stderr
        client = aioredis.Redis.from_url(redis.url)
        entries = await client.xrange("ticks")
        await client.aclose()
    finally:
        redis.stop()
    # Replayed messages come back from their records: no raw frame, the record instead.
    frames = [json.loads(fields[b"frame"]) for _, fields in entries]
    assert [frame.get("n", frame.get("body", {}).get("n")) for frame in frames] == [1, 2, 3, 4]


# --------------------------------------------------------------------------- a reload in an outage

RELOAD = """
[connections.up]
url = "{upstream}"
codec = "json"
ping_interval = 0

[routes.all]
handlers = ["forward"]

[handlers.forward]
plugin = "websocket"
url = "ws://127.0.0.1:{target}/"
reconnect = {{ initial = "50ms", max = "200ms" }}
"""


@pytest.mark.anyio
async def test_a_reload_that_keeps_the_handler_keeps_what_it_holds(tmp_path: Path) -> None:
    from wsroute.config import load
    from wsroute.service import Service, plan

    upstream, target = ScriptedUpstream(), ScriptedUpstream(port=free_port())
    path = tmp_path / "wsroute.toml"
    async with upstream.serve() as url:
        path.write_text(RELOAD.format(upstream=url, target=target.port))
        service = Service(plan(load(path)), reload=lambda: plan(load(path)))
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            try:
                await wait_until(lambda: upstream.connections == 1, 10)
                await upstream.send(_tick(1))
                runner = service.runners["forward"]
                await wait_until(lambda: runner.outage.active, 10)  # the target is down
                # Another route and handler: [handlers.forward] is unchanged, so it is kept.
                path.write_text(
                    path.read_text()
                    + '\n[routes.more]\nhandlers = ["log"]\n\n[handlers.log]\nplugin = "log"\n'
                )
                assert await service.reload()
                assert service.runners["forward"] is runner
                assert runner.in_flight == 1
                assert runner.outage.active
                async with target.serve():
                    await wait_until(lambda: runner.stats.handled == 1, 10)
            finally:
                service.shutdown()
    assert [json.loads(frame)["n"] for frame in target.received] == [1]
    assert runner.stats.dead_lettered == 0
