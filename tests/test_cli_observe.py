"""``wsroute status``, ``tap`` and ``top`` as an operator runs them: real subprocesses
against a small API server started here (websockets' server with
``process_request``, on 127.0.0.1 and on a Unix socket) that serves the
``/status`` document and the ``/tap`` records of docs/observability.md — fake
figures in the real shape — and once against a real ``wsroute run``.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import http
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve, unix_serve

WSROUTE = str(Path(sys.executable).with_name("wsroute"))

STATUS: dict[str, Any] = {
    "version": "0.1.0",
    "pid": 1234,
    "started_at": 1733400000.1,
    "config": "/etc/wsroute/wsroute.toml",
    "config_loaded_at": 1733400000.0,
    "reload_failed": False,
    "reloads": {"success": 2, "failure": 0},
    "connections": {
        "exchange": {
            "state": "connected",
            "url": "wss://ws.example.com:2443/",
            "connected_since": 1733400001.2,
            "last_frame_at": 1733400123.4,
            "frames": 10234,
            "decode_errors": 0,
            "unmatched": 3,
            "reconnects": 1,
            "failed_attempts": 0,
            "last_error": "connection_lost code=1006",
            "last_close_code": 1006,
            "outage_seconds": None,
        }
    },
    "handlers": {
        "archive": {
            "plugin": "jsonl",
            "started": True,
            "queue_depth": 0,
            "queue_capacity": 10000,
            "queued_bytes": 0,
            "queue_bytes_capacity": 67108864,
            "in_flight": 0,
            "received": 10231,
            "handled": 10231,
            "dead_lettered": 0,
            "dropped": 0,
            "released": 0,
            "lost": 0,
            "failures": 0,
            "retries": 0,
            "timeouts": 0,
        }
    },
    "sources": {"ticks": {"delivered": 0, "settled": 0, "in_flight": 0}},
    "memory": {"queued_bytes": 0, "budget": 536870912, "pauses": 0},
}

RECORDS = [
    {
        "connection": "exchange",
        "key": 1,
        "seq": n,
        "received_at": 1733400100.0 + n,
        "fields": {"opcode": 1},
        "body": {"n": n},
        "handlers": ["archive"],
    }
    for n in range(1, 6)
]


def troubled() -> dict[str, Any]:
    """A daemon with every kind of problem the status view highlights."""
    doc = copy.deepcopy(STATUS)
    doc["reload_failed"] = True
    conn = doc["connections"]["exchange"]
    conn.update(state="waiting", connected_since=None, outage_seconds=42.5)
    doc["handlers"]["archive"].update(queue_depth=9000, lost=2)
    return doc


class FakeApi:
    """The API's endpoints with fake figures: /status, and /tap sending :data:`RECORDS`.

    Every request's target is kept in :attr:`targets` (the query string included).
    Each /status read advances the counters, as a busy daemon's would.
    """

    def __init__(
        self,
        status: dict[str, Any] | None = None,
        *,
        private_over_tcp: bool = True,
        dropped_notice: bool = True,
        hang_up_after: int | None = None,
    ) -> None:
        self.status = status or copy.deepcopy(STATUS)
        self.private_over_tcp = private_over_tcp
        self.dropped_notice = dropped_notice
        self.hang_up_after = hang_up_after
        self.targets: list[str] = []
        self.reads = 0
        self.servers: list[Server] = []
        self.threads: list[threading.Thread] = []
        self.port = 0
        self.unix_path = ""

    def process_request(self, ws: ServerConnection, request: Request, *, unix: bool) -> Any:
        self.targets.append(request.path)
        path = urlsplit(request.path).path
        if path not in ("/status", "/tap"):
            return ws.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        if not unix and not self.private_over_tcp:
            return ws.respond(http.HTTPStatus.FORBIDDEN, f"{path} is served on the Unix socket\n")
        if path == "/status":
            self.reads += 1
            doc = copy.deepcopy(self.status)
            doc["connections"]["exchange"]["frames"] += 500 * self.reads
            doc["handlers"]["archive"]["handled"] += 400 * self.reads
            doc["handlers"]["archive"]["received"] += 400 * self.reads
            body = json.dumps(doc).encode()
            headers = Headers(
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            )
            return Response(200, "OK", headers, body)
        return None

    def tap(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            if self.dropped_notice:
                ws.send(json.dumps({"event": "tap_dropped", "count": 7}))
            for n, record in enumerate(RECORDS, 1):
                ws.send(json.dumps(record))
                if self.hang_up_after is not None and n >= self.hang_up_after:
                    return  # the daemon goes away
            ws.recv()  # until the client leaves

    @contextlib.contextmanager
    def running(self, socket_dir: Path) -> Iterator[FakeApi]:
        tcp = serve(
            self.tap,
            "127.0.0.1",
            0,
            process_request=lambda ws, req: self.process_request(ws, req, unix=False),
        )
        self.port = tcp.socket.getsockname()[1]
        self.unix_path = str(socket_dir / "api.sock")
        unix = unix_serve(
            self.tap,
            self.unix_path,
            process_request=lambda ws, req: self.process_request(ws, req, unix=True),
        )
        self.servers = [tcp, unix]
        for server in self.servers:
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            self.threads.append(thread)
        try:
            yield self
        finally:
            for server in self.servers:
                server.shutdown()
            for thread in self.threads:
                thread.join(5)

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def unix(self) -> str:
        return f"unix:{self.unix_path}"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short folder for Unix sockets (a path is limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="wsr-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def api(socket_dir: Path) -> Iterator[FakeApi]:
    with FakeApi().running(socket_dir) as fake:
        yield fake


def config_file(tmp_path: Path, listen: list[str] | None) -> Path:
    api = f"\n[daemon.api]\nlisten = {json.dumps(listen)}\n" if listen is not None else ""
    path = tmp_path / "wsroute.toml"
    path.write_text(
        f"""
[daemon]
log_level = "warning"
{api}
[connections.exchange]
url = "ws://127.0.0.1:1/"

[handlers.archive]
plugin = "jsonl"
path = "{tmp_path / "archive.jsonl"}"

[routes.all]
handlers = ["archive"]
""",
        encoding="utf-8",
    )
    return path


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
    return subprocess.run(
        [WSROUTE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


# --------------------------------------------------------------------------- status


def test_status_reads_the_unix_socket_of_the_config_and_prints_a_plain_table(
    api: FakeApi, tmp_path: Path
) -> None:
    config = config_file(tmp_path, [api.tcp, api.unix])
    result = run("status", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert api.reads == 1
    assert api.targets == ["/status"]  # once, on the Unix socket (the TCP one refuses nothing)
    out = result.stdout
    assert "\x1b[" not in out  # stdout is a pipe: plain text
    lines = out.splitlines()
    exchange = next(line for line in lines if line.startswith("exchange"))
    assert "connected" in exchange
    assert "10,734" in exchange  # frames, after the fake's first read
    assert "connection_lost code=1006" in exchange
    archive = next(line for line in lines if line.startswith("archive"))
    assert "0/10,000" in archive
    assert "0%" in archive
    assert "10,631" in archive  # handled
    assert "problems" not in out


def test_status_over_tcp_with_the_api_option(api: FakeApi) -> None:
    result = run("status", "--api", api.tcp)
    assert result.returncode == 0, result.stderr
    assert "exchange" in result.stdout
    assert "archive" in result.stdout


def test_status_json_prints_the_document_as_received(api: FakeApi) -> None:
    result = run("status", "--api", api.unix, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["pid"] == 1234
    assert doc["connections"]["exchange"]["frames"] == 10234 + 500
    assert set(doc) == set(STATUS)


def test_status_names_every_problem(socket_dir: Path) -> None:
    with FakeApi(troubled()).running(socket_dir) as fake:
        result = run("status", "--api", fake.unix)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "LAST RELOAD FAILED" in out
    exchange = next(line for line in out.splitlines() if line.startswith("exchange"))
    assert "waiting" in exchange
    assert "down 42s" in exchange
    assert "90%" in out
    problems = out[out.index("problems:") :]
    assert "the last reload failed" in problems
    assert "connection exchange is waiting (for 42s): connection_lost code=1006" in problems
    assert "handler archive's queue is 90% full" in problems
    assert "handler archive lost 2 messages" in problems


def test_status_refused_over_tcp_says_to_use_the_unix_socket(socket_dir: Path) -> None:
    with FakeApi(private_over_tcp=False).running(socket_dir) as fake:
        result = run("status", "--api", fake.tcp)
        assert result.returncode == 77
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert "Unix socket" in line
        assert "tap_over_tcp" in line
        tap = run("tap", "--api", fake.tcp, "--limit", "1")
        assert tap.returncode == 77
        assert "tap_over_tcp" in tap.stderr


# --------------------------------------------------------------------------- tap


def test_tap_prints_records_one_a_line_with_the_filters_as_query(
    api: FakeApi, tmp_path: Path
) -> None:
    config = config_file(tmp_path, [api.unix])
    result = run(
        "tap",
        "-c",
        str(config),
        "--connection",
        "exchange",
        "--key",
        "1",
        "--key",
        "2",
        "--handler",
        "archive",
        "--route",
        "data",
        "--limit",
        "3",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [json.loads(line) for line in lines] == RECORDS[:3]
    assert "tap_dropped" in result.stderr
    assert "7" in result.stderr
    [target] = api.targets
    url = urlsplit(target)
    assert url.path == "/tap"
    assert parse_qs(url.query) == {
        "connection": ["exchange"],
        "key": ["1", "2"],
        "handler": ["archive"],
        "route": ["data"],
    }


def test_tap_over_tcp_without_filters(api: FakeApi) -> None:
    result = run("tap", "--api", api.tcp, "--limit", "2")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    assert api.targets == ["/tap"]


def test_tap_ends_with_69_when_the_daemon_goes_away(socket_dir: Path) -> None:
    with FakeApi(hang_up_after=2, dropped_notice=False).running(socket_dir) as fake:
        result = run("tap", "--api", fake.unix)
    assert result.returncode == 69
    assert [json.loads(line) for line in result.stdout.splitlines()] == RECORDS[:2]
    [line] = result.stderr.splitlines()
    assert "went away" in line


def test_tap_stops_quietly_on_ctrl_c(api: FakeApi) -> None:
    proc = subprocess.Popen(
        [WSROUTE, "tap", "--api", api.unix],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for _ in RECORDS:
            assert json.loads(proc.stdout.readline())["connection"] == "exchange"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


# --------------------------------------------------------------------------- errors


def test_a_config_without_an_api_is_exit_78(tmp_path: Path) -> None:
    config = config_file(tmp_path, None)
    for verb in ("status", "tap", "top"):
        result = run(verb, "-c", str(config))
        assert result.returncode == 78, (verb, result.stderr)
        [line] = result.stderr.splitlines()
        assert "the API is not configured: add [daemon.api] listen = [...]" in line


def test_nothing_listening_is_exit_69(tmp_path: Path, socket_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        for verb in ("status", "tap", "top"):
            result = run(verb, "--api", f"127.0.0.1:{port}")
            assert result.returncode == 69, (verb, result.stderr)
            assert result.stderr.splitlines() == [
                f"wsroute: wsroute is not running (nothing listens on 127.0.0.1:{port})"
            ]
    gone = socket_dir / "gone.sock"
    config = config_file(tmp_path, [f"unix:{gone}"])
    result = run("status", "-c", str(config))
    assert result.returncode == 69
    assert f"nothing listens on unix:{gone}" in result.stderr


def test_a_bad_api_address_is_one_line() -> None:
    result = run("status", "--api", "nowhere")
    assert result.returncode == 78
    assert len(result.stderr.splitlines()) == 1
    assert "HOST:PORT" in result.stderr


# --------------------------------------------------------------------------- top

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


@pytest.mark.parametrize("leave", ["q", "ctrl-c"])
def test_top_refreshes_with_rates_and_leaves_on_q_or_ctrl_c(api: FakeApi, leave: str) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    before = termios.tcgetattr(slave)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [WSROUTE, "top", "--api", api.unix, "--interval", "0.2"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=dict(env, TERM="xterm-256color"),
        start_new_session=True,
    )
    screen = b""
    try:
        deadline = time.monotonic() + 20
        while api.reads < 4 and time.monotonic() < deadline:
            screen += read_some(master, 0.1)
        assert api.reads >= 4, screen.decode(errors="replace")
        screen += read_some(master, 0.3)
        if leave == "q":
            os.write(master, b"q")
        else:
            proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        screen += read_some(master, 0.2)
        assert termios.tcgetattr(slave) == before  # cbreak mode undone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(slave)
        os.close(master)
    text = ANSI.sub("", screen.decode("utf-8", errors="replace"))
    assert "exchange" in text
    assert "archive" in text
    assert "frames/s" in text
    assert re.search(r"\b[1-9][\d,]*(\.\d)?/s", text), text  # a rate, from two reads
    assert b"\x1b[?1049l" in screen  # the alternate screen left: the terminal restored
    assert "Traceback" not in text


def top_against(args: list[str], seconds: float) -> str:
    """Run ``wsroute top ARGS`` in a pseudo-terminal for ``seconds``, leave with ``q``;
    the screen's text (exit 0 asserted)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [WSROUTE, "top", *args, "--interval", "0.2"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=dict(env, TERM="xterm-256color"),
        start_new_session=True,
    )
    try:
        screen = read_some(master, seconds)
        os.write(master, b"q")
        assert proc.wait(10) == 0
        screen += read_some(master, 0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(slave)
        os.close(master)
    return ANSI.sub("", screen.decode("utf-8", errors="replace"))


def read_some(fd: int, seconds: float) -> bytes:
    data = b""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        data += chunk
    return data


def test_top_needs_a_terminal(api: FakeApi) -> None:
    result = run("top", "--api", api.unix)
    assert result.returncode == 64
    assert "wsroute status" in result.stderr


# --------------------------------------------------------------------------- a real daemon


@contextlib.contextmanager
def upstream() -> Iterator[str]:
    """A websockets server sending ``{"n": N}`` every 20 ms to whoever connects."""

    def talk(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            n = 0
            while True:
                n += 1
                ws.send(json.dumps({"n": n}))
                with contextlib.suppress(TimeoutError):
                    ws.recv(timeout=0.02)

    server = serve(talk, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
    finally:
        server.shutdown()
        thread.join(5)


@pytest.mark.slow
def test_status_and_tap_against_a_real_daemon(tmp_path: Path, socket_dir: Path) -> None:
    sock = socket_dir / "api.sock"
    config = tmp_path / "wsroute.toml"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
    }
    with upstream() as url:
        config.write_text(
            f"""
[daemon]
log_level = "warning"
log_format = "json"
shutdown_timeout = "1s"

[daemon.api]
listen = ["unix:{sock}"]

[connections.exchange]
url = "{url}"

[handlers.archive]
plugin = "jsonl"
path = "{tmp_path / "archive.jsonl"}"

[routes.all]
handlers = ["archive"]
""",
            encoding="utf-8",
        )
        with (tmp_path / "stderr.log").open("wb") as err:
            daemon = subprocess.Popen(
                [WSROUTE, "run", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        try:
            deadline = time.monotonic() + 20
            while True:
                result = run("status", "-c", str(config), "--json")
                if result.returncode == 0:
                    doc = json.loads(result.stdout)
                    if doc["connections"]["exchange"]["frames"] > 0:
                        break
                assert daemon.poll() is None, (tmp_path / "stderr.log").read_text()
                assert time.monotonic() < deadline, result.stderr
                time.sleep(0.1)
            assert doc["pid"] == daemon.pid
            assert doc["handlers"]["archive"]["plugin"] == "jsonl"

            result = run("status", "-c", str(config))
            assert result.returncode == 0, result.stderr
            exchange = next(x for x in result.stdout.splitlines() if x.startswith("exchange"))
            assert "connected" in exchange
            assert any(x.startswith("archive") for x in result.stdout.splitlines())
            assert "problems" not in result.stdout

            tap = run("tap", "-c", str(config), "--connection", "exchange", "--limit", "2")
            assert tap.returncode == 0, tap.stderr
            records = [json.loads(line) for line in tap.stdout.splitlines()]
            assert len(records) == 2
            assert all(r["connection"] == "exchange" for r in records)
            assert all(r["handlers"] == ["archive"] for r in records)
            assert records[1]["seq"] > records[0]["seq"]

            # top, under a pseudo-terminal, refreshing from the real daemon
            text = top_against(["-c", str(config)], seconds=2.0)
            assert "exchange" in text
            assert "archive" in text
            assert re.search(r"\b[1-9][\d,]*(\.\d)?/s", text), text  # frames flowing

            refused = run("tap", "-c", str(config), "--route", "nosuch")
            assert refused.returncode == 64
            [line] = refused.stderr.splitlines()
            assert "HTTP 400" in line
            assert "nosuch" in line
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(15)
            finally:
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait()
        result = run("status", "-c", str(config))
        assert result.returncode == 69
        assert "wsroute is not running" in result.stderr
