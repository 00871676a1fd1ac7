"""``[daemon.api]`` end to end: a real ``wsroute run``, real HTTP and WebSocket clients.

The daemon runs as a subprocess on a config with a TCP and a Unix-socket
address; the upstream is a :class:`~wsroute.testing.ScriptedUpstream` in the
test process. Every ``/status`` read checks the delivery identity; every wait
is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import Process
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import InvalidStatus

from wsroute.api import METRIC_NAMES
from wsroute.testing import ScriptedUpstream, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PLUGIN = '''
"""A handler for the API tests: fails on purpose, or takes its time."""

from dataclasses import dataclass

import anyio

from wsroute import Duration, HandlerContext, Message


class Sink:
    @dataclass
    class Options:
        fail: bool = False
        delay: Duration = Duration(0)

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options

    async def handle(self, message: Message) -> None:
        if self.options.fail:
            raise RuntimeError("failing on purpose")
        await anyio.sleep(self.options.delay)
'''

CONFIG = """
[daemon]
log_level = "info"
log_format = "json"
shutdown_timeout = "2s"
dead_letter = "dlq"
plugin_paths = ["{plugins}"]

[daemon.api]
listen = {listen}
socket_mode = "0640"

[connections.up]
url = "{url}"
codec = "j"
close_timeout = "500ms"

[connections.up.reconnect]
initial = "100ms"
max = "300ms"

[codecs.j]
type = "json"
key = "type"

[routes.good]
key = "a"
handlers = ["archive"]

[routes.bad]
key = "f"
handlers = ["failing"]

[routes.flood]
connection = "up"
key = "d"
handlers = ["dropper"]

[handlers.archive]
plugin = "jsonl"
path = "{root}/archive.jsonl"

[handlers.failing]
plugin = "apitest:Sink"
fail = true
retries = 0

[handlers.dropper]
plugin = "apitest:Sink"
delay = "{delay}"
queue = 5
overflow = "drop-newest"

[handlers.dlq]
plugin = "jsonl"
path = "{root}/dead.jsonl"
"""


@dataclass
class Run:
    """One daemon's files: its config, its log, its Unix socket (a short path)."""

    root: Path
    sockdir: Path
    port: int
    url: str = ""

    @property
    def config(self) -> Path:
        return self.root / "wsroute.toml"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr.log"

    @property
    def sock(self) -> Path:
        return self.sockdir / "api.sock"

    def write(self, *, listen: list[str] | None = None, delay: str = "20ms") -> None:
        plugins = self.root / "plugins"
        if not plugins.exists():
            plugins.mkdir()
            (plugins / "apitest.py").write_text(textwrap.dedent(PLUGIN))
            plugins.chmod(0o700)
        if listen is None:
            listen = [f"127.0.0.1:{self.port}", f"unix:{self.sock}"]
        self.config.write_text(
            CONFIG.format(
                plugins=plugins,
                listen=json.dumps(listen),
                url=self.url,
                root=self.root,
                delay=delay,
            )
        )

    def log(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    # A Unix socket path has a ~100-byte limit: pytest's tmp_path may be longer.
    sockdir = Path(tempfile.mkdtemp(prefix="wsapi-", dir="/tmp"))
    try:
        yield Run(tmp_path, sockdir, free_port())
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def _command(config: Path) -> list[str]:
    script = Path(sys.executable).with_name("wsroute")
    if script.exists():
        return [str(script), "run", "-c", str(config)]
    return [sys.executable, "-m", "wsroute.cli", "run", "-c", str(config)]


@contextlib.asynccontextmanager
async def daemon(run: Run) -> AsyncIterator[Process]:
    """``wsroute run`` on the run's config; killed if the test leaves it running."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    with run.stderr.open("wb") as err:
        proc = await anyio.open_process(
            _command(run.config),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            with anyio.move_on_after(5):
                await proc.wait()


@contextlib.asynccontextmanager
async def clients(run: Run, port: int | None = None) -> AsyncIterator[tuple[Any, Any]]:
    """HTTP clients for the TCP address and the Unix socket."""
    tcp = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port or run.port}", timeout=5)
    unix = httpx.AsyncClient(
        base_url="http://wsroute", transport=httpx.AsyncHTTPTransport(uds=str(run.sock)), timeout=5
    )
    async with tcp, unix:
        yield tcp, unix


async def until(what: str, check: Any, timeout: float = 10.0, step: float = 0.05) -> Any:
    """Poll the async ``check()`` until it returns something true; that value."""
    with anyio.move_on_after(timeout):
        while True:
            with contextlib.suppress(httpx.TransportError):
                value = await check()
                if value:
                    return value
            await anyio.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def up(client: httpx.AsyncClient) -> bool:
    return (await client.get("/health")).status_code == 200


async def status(client: httpx.AsyncClient) -> dict[str, Any]:
    """``/status``, checking the delivery identity of every handler."""
    answer = await client.get("/status")
    assert answer.status_code == 200, answer.text
    doc: dict[str, Any] = answer.json()
    for name, h in doc["handlers"].items():
        settled = h["handled"] + h["dead_lettered"] + h["dropped"] + h["released"]
        assert h["received"] == settled + h["in_flight"], (name, h)
    return doc


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def metrics(client: httpx.AsyncClient) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and each family's type by its exposed name."""
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(answer.text):
        types[family.name + ("_total" if family.type == "counter" else "")] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def frame(key: str, n: int, pad: int = 0) -> str:
    return json.dumps({"type": key, "n": n, "pad": "x" * pad})


async def stop(proc: Process) -> int:
    proc.send_signal(signal.SIGTERM)
    with anyio.fail_after(20):
        return await proc.wait()


async def test_endpoints_metrics_and_reloads(run: Run) -> None:
    upstream = ScriptedUpstream()
    async with upstream.serve() as url:
        run.url = url
        run.write()
        async with daemon(run) as proc, clients(run) as (tcp, unix):
            await until("the API", lambda: up(tcp), 15)
            assert await up(unix)
            await until("ready", lambda: _ready(unix))
            assert stat.S_IMODE(os.stat(run.sock).st_mode) == 0o640
            # /status and /tap show message contents: Unix socket only by default
            assert (await tcp.get("/status")).status_code == 403
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"ws://127.0.0.1:{run.port}/tap"):
                    pass
            assert refused.value.response.status_code == 403
            assert (await tcp.get("/nope")).status_code == 404
            assert (await unix.get("/ready")).json() == {"ready": True}

            before, types = await metrics(tcp)
            assert set(METRIC_NAMES) <= set(types), set(METRIC_NAMES) - set(types)
            assert any(name.startswith("process_") for name in types)
            assert sample(before, "wsroute_build_info", version=(await status(unix))["version"])
            assert sample(before, "wsroute_connection_up", connection="up") == 1

            for n in range(50):
                await upstream.send(frame("a", n))
            for n in range(10):
                await upstream.send(frame("f", n))
            for n in range(100):
                await upstream.send(frame("d", n))
            await upstream.send(frame("nobody", 0))

            async def settled() -> bool:
                h = (await status(unix))["handlers"]
                return (
                    h["archive"]["handled"] == 50
                    and h["failing"]["dead_lettered"] == 10
                    and h["dropper"]["received"] == 100
                    and h["dropper"]["in_flight"] == 0
                    and h["dlq"]["handled"] == 10
                )

            await until("the frames settled", settled, 15, 0.02)  # identity at every read
            after, _ = await metrics(tcp)

            def moved(name: str, **labels: str) -> float:
                return sample(after, name, **labels) - sample(before, name, **labels)

            assert moved("wsroute_connection_frames_total", connection="up") == 161
            assert moved("wsroute_unmatched_total", connection="up") == 1
            assert moved("wsroute_handler_received_total", handler="archive") == 50
            assert (
                moved("wsroute_handler_messages_total", handler="archive", outcome="handled") == 50
            )
            dead = ("wsroute_handler_messages_total", {"handler": "failing"})
            assert moved(dead[0], **dead[1], outcome="dead_lettered") == 10
            dropped = sample(
                after, "wsroute_handler_messages_total", handler="dropper", outcome="dropped"
            )
            handled = sample(
                after, "wsroute_handler_messages_total", handler="dropper", outcome="handled"
            )
            assert dropped > 0
            assert dropped + handled == 100
            assert sample(after, "wsroute_handler_queue_capacity", handler="dropper") == 5
            assert sample(after, "wsroute_connection_last_frame_timestamp_seconds", connection="up")

            # A reload that replaces the dropper: its counters go on from where they were.
            run.write(delay="10ms")
            proc.send_signal(signal.SIGHUP)
            await until("the reload", lambda: _reloads(unix, "success"))
            for n in range(20):
                await upstream.send(frame("d", 100 + n))
            await until(
                "the dropper after the reload",
                lambda: _handler(unix, "dropper", received=120, in_flight=0),
            )
            reloaded, _ = await metrics(tcp)
            _assert_monotonic(after, reloaded)
            assert sample(reloaded, "wsroute_config_reloads_total", result="success") == 1
            assert await stop(proc) == 0
    assert not run.sock.exists()  # removed at stop
    listening = [e for e in run.log() if e.get("event") == "api_listening"]
    assert {e["address"] for e in listening} == {f"127.0.0.1:{run.port}", f"unix:{run.sock}"}


async def test_a_reload_moves_the_listen_address(run: Run) -> None:
    upstream = ScriptedUpstream()
    async with upstream.serve() as url:
        run.url = url
        run.write()
        async with daemon(run) as proc, clients(run) as (tcp, unix):
            await until("the API", lambda: up(tcp), 15)
            await upstream.send(frame("a", 0))
            await until("a message", lambda: _handler(unix, "archive", handled=1))
            before, _ = await metrics(tcp)
            new_port = free_port()
            run.write(listen=[f"127.0.0.1:{new_port}", f"unix:{run.sock}"])
            proc.send_signal(signal.SIGHUP)
            async with clients(run, new_port) as (moved_tcp, _):
                await until("the new TCP address", lambda: up(moved_tcp))
                await until("the reload", lambda: _reloads(unix, "success"))
                with pytest.raises(httpx.ConnectError):
                    await tcp.get("/health")
                reloaded, _ = await metrics(moved_tcp)
                _assert_monotonic(before, reloaded)

                # A listen address that cannot be opened fails the reload: nothing changes.
                with socket.socket() as taken:
                    taken.bind(("127.0.0.1", 0))
                    taken.listen()
                    busy = taken.getsockname()[1]
                    run.write(
                        listen=[f"127.0.0.1:{new_port}", f"127.0.0.1:{busy}", f"unix:{run.sock}"]
                    )
                    proc.send_signal(signal.SIGHUP)
                    await until("the failed reload", lambda: _reloads(unix, "failure"))
                doc = await status(unix)
                assert doc["reload_failed"] is True
                assert await up(moved_tcp)
                assert await up(unix)
                failed = [e for e in run.log() if e.get("event") == "reload_invalid"]
                assert any("daemon.api.listen" in e["error"] for e in failed), failed
                last, _ = await metrics(moved_tcp)
                _assert_monotonic(reloaded, last)
            assert await stop(proc) == 0
    assert not run.sock.exists()
    listening = [e for e in run.log() if e.get("event") == "api_listening"]
    assert [e["address"] for e in listening] == [
        f"127.0.0.1:{run.port}",
        f"unix:{run.sock}",
        f"127.0.0.1:{new_port}",
    ]


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/ready")).status_code == 200


async def _reloads(client: httpx.AsyncClient, result: str) -> bool:
    return bool((await status(client))["reloads"][result])


async def _handler(client: httpx.AsyncClient, name: str, **expected: int) -> bool:
    h = (await status(client))["handlers"][name]
    return all(h[k] == v for k, v in expected.items())


def _assert_monotonic(earlier: Samples, later: Samples) -> None:
    for (name, labels), value in earlier.items():
        if name.startswith("wsroute_") and name.endswith("_total"):
            assert later.get((name, labels), 0.0) >= value, (name, labels)


async def test_ready_follows_the_upstream(run: Run) -> None:
    upstream = ScriptedUpstream(port=free_port())
    run.url = f"ws://127.0.0.1:{upstream.port}/"
    run.write()
    async with daemon(run) as proc, clients(run) as (tcp, _):
        async with upstream.serve():
            await until("ready", lambda: _ready(tcp), 15)
        # the upstream went away

        async def down() -> bool:
            answer = await tcp.get("/ready")
            return answer.status_code == 503 and answer.json()["connections_down"] == ["up"]

        await until("/ready 503", down, 5)
        body = (await tcp.get("/ready")).json()
        assert body == {"ready": False, "connections_down": ["up"], "handlers_not_started": []}
        samples, _ = await metrics(tcp)
        assert sample(samples, "wsroute_connection_up", connection="up") == 0
        async with upstream.serve():
            await until("/ready 200 after the reconnect", lambda: _ready(tcp), 10)
            samples, _ = await metrics(tcp)
            assert sample(samples, "wsroute_connection_up", connection="up") == 1
            assert sample(samples, "wsroute_connection_reconnects_total", connection="up") >= 1
            assert await stop(proc) == 0


async def _tap(run: Run, query: str = "", **kwargs: Any) -> ClientConnection:
    return await unix_connect(str(run.sock), f"ws://wsroute/tap{query}", **kwargs)


async def _records(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` records, then nothing more for a moment."""
    got = []
    with anyio.fail_after(5):
        for _ in range(count):
            got.append(json.loads(await ws.recv()))
    with anyio.move_on_after(0.3):
        extra = await ws.recv()
        raise AssertionError(f"more than {count} records: {extra}")
    return got


async def test_tap_filters_and_a_slow_client(run: Run) -> None:
    upstream = ScriptedUpstream()
    async with upstream.serve() as url:
        run.url = url
        run.write(delay="0s")
        async with daemon(run) as proc, clients(run) as (_, unix):
            await until("ready", lambda: _ready(unix), 15)
            with pytest.raises(InvalidStatus) as bad:
                await _tap(run, "?route=nope")
            assert bad.value.response.status_code == 400
            taps = {
                "all": await _tap(run),
                "failing": await _tap(run, "?handler=failing"),
                "keys": await _tap(run, "?key=d&key=nobody&connection=up"),
                "route": await _tap(run, "?route=good&route=flood"),
                "other": await _tap(run, "?connection=elsewhere"),
            }
            for n in range(3):
                await upstream.send(frame("a", n))
            await upstream.send(frame("f", 0))
            await upstream.send(frame("d", 0))
            await upstream.send(frame("nobody", 0))
            every = await _records(taps["all"], 6)
            assert [(r["key"], r["handlers"]) for r in every] == [
                ("a", ["archive"]),
                ("a", ["archive"]),
                ("a", ["archive"]),
                ("f", ["failing"]),
                ("d", ["dropper"]),
                ("nobody", []),
            ]
            first = every[0]
            assert first["connection"] == "up"
            assert first["body"] == {"type": "a", "n": 0, "pad": ""}
            assert {"seq", "received_at", "fields"} <= set(first)
            assert [r["key"] for r in await _records(taps["failing"], 1)] == ["f"]
            assert [r["key"] for r in await _records(taps["keys"], 2)] == ["d", "nobody"]
            assert [r["key"] for r in await _records(taps["route"], 4)] == ["a", "a", "a", "d"]
            await _records(taps["other"], 0)
            for ws in taps.values():
                await ws.close()

            # A client that never reads: delivery goes on, the client is told what it missed.
            frames = 3000
            slow = await _tap(run, "?key=a", max_queue=1)
            base = (await status(unix))["handlers"]["archive"]["handled"]
            with anyio.fail_after(20):
                for n in range(frames):
                    await upstream.send(frame("a", n, pad=2000))
            await until(
                "delivery while a tap client does not read",
                lambda: _handler(unix, "archive", handled=base + frames),
                20,
            )
            # Now it reads: what was buffered, then the notice, then the next record that
            # fit (sent until one does: the buffer may still be full for a moment).
            got: list[dict[str, Any]] = []

            async def read() -> None:
                while True:
                    record = json.loads(await slow.recv())
                    got.append(record.get("body", record))

            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                with anyio.fail_after(10):
                    extra = frames
                    while not any(r.get("n", -1) >= frames for r in got):
                        await upstream.send(frame("a", extra))
                        extra += 1
                        await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
            # Every message accounted for, in order: each record is the next one, or a
            # notice tells how many were dropped just before it.
            assert any(r.get("event") == "tap_dropped" for r in got)
            expected, told = 0, False
            for r in got:
                if r.get("event") == "tap_dropped":
                    assert r["count"] > 0
                    assert not told  # one notice per gap, right before the next record
                    expected, told = expected + r["count"], True
                else:
                    assert r["n"] == expected, (r["n"], expected)
                    expected, told = expected + 1, False
            assert not told
            await slow.close()
            assert await stop(proc) == 0
    taps_logged = [e for e in run.log() if e.get("event") == "tap_closed"]
    assert taps_logged


async def test_listen_problems(run: Run) -> None:
    upstream = ScriptedUpstream()
    async with upstream.serve() as url:
        run.url = url
        # A stale socket file (its process is gone) is replaced.
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(run.sock))
        stale.close()
        run.write()
        async with daemon(run) as proc, clients(run) as (_, unix):
            await until("the API on the stale path", lambda: up(unix), 15)
            assert await stop(proc) == 0
        # A live socket is not taken over, and a port in use: exit 78 naming the key.
        with socket.socket(socket.AF_UNIX) as live:
            live.bind(str(run.sock))
            live.listen()
            async with daemon(run) as proc:
                with anyio.fail_after(20):
                    code = await proc.wait()
            assert code == 78
            err = run.stderr.read_text()
            assert "daemon.api.listen" in err
            assert f"unix:{run.sock}" in err
            assert run.sock.exists()  # still the other process's socket
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            run.port = taken.getsockname()[1]
            run.write()
            async with daemon(run) as proc:
                with anyio.fail_after(20):
                    code = await proc.wait()
            assert code == 78
            assert f"daemon.api.listen: cannot listen on 127.0.0.1:{run.port}" in (
                run.stderr.read_text()
            )
