"""No sink credential leaves the daemon: hostile endpoints that echo everything back.

A real ``wsroute run`` routes the reference upstream's ticks to a webhook, a
nats, a redis and a websocket sink, each with ``user:password@`` in its URL
(and, where the URL can carry them, ``?token=`` and a secret header). Every
endpoint fails and quotes the request back: the HTTP one answers 400 with the
request line and every header in its body (so the Basic value, the token and
the API key come back), the NATS one answers ``-ERR`` quoting the CONNECT line
(user and password), the Redis one ``-ERR`` quoting the command (AUTH and
its password). No credential may appear in any log line at the default
level, in the dead letters, in ``wsroute check``'s output or in
``wsroute replay``'s — while the shape of each URL stays visible.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from systemd_helpers import (
    WSROUTE,
    NotifyListener,
    daemon,
    daemon_environ,
    jsonl_lines,
    notify_listener,
    reference_config,
    upstream,
    wait_for,
)

pytestmark = pytest.mark.slow

#: Every credential of the config; none may appear anywhere the daemon writes.
CREDENTIALS = {
    "hookuser7": "webhook user",
    "hookPASS789": "webhook password",
    "hookTOK321": "webhook token",
    "hookKEY456": "webhook header",
    "natsuser7": "nats user",
    "natsPASS123": "nats password",
    "redisuser7": "redis user",
    "redisPASS123": "redis password",
    "wsuser7": "websocket user",
    "wsPASS123": "websocket password",
    "wsTOK123": "websocket token",
    "wsKEY456": "websocket header",
}
#: The Basic values the clients send, as the echo shows them.
BASIC = [
    base64.b64encode(b"hookuser7:hookPASS789").decode(),
    base64.b64encode(b"wsuser7:wsPASS123").decode(),
]


def leaks(text: str) -> list[str]:
    found = [what for secret, what in CREDENTIALS.items() if secret in text]
    return found + [f"Basic {value}" for value in BASIC if value in text]


# --------------------------------------------------------------------------- echoing endpoints


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers every request 400, quoting its request line and every header."""

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        # The credentials first: the webhook keeps the start of an error body only.
        quoted = [f"{name}: {self.headers.get(name)}" for name in ("Authorization", "X-Api-Key")]
        body = "\n".join([f"rejected {self.requestline}", *quoted, str(self.headers)]).encode()
        self.send_response(400)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _echo

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def http_echo() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _nats_session(conn: socket.socket) -> None:
    conn.sendall(
        b'INFO {"server_id":"echo","version":"2.10.0","proto":1,"host":"127.0.0.1",'
        b'"port":4222,"max_payload":1048576,"auth_required":true}\r\n'
    )
    data = b""
    while b"\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    line = data.split(b"\r\n", 1)[0].decode(errors="replace").replace("'", '"')
    conn.sendall(f"-ERR 'Authorization Violation for {line}'\r\n".encode())


def _redis_session(conn: socket.socket) -> None:
    data = conn.recv(65536)
    if data:
        quoted = data.decode(errors="replace").replace("\r\n", " ")
        conn.sendall(f"-ERR refused {quoted}\r\n".encode())


@contextlib.contextmanager
def tcp_echo(session: object) -> Iterator[int]:
    """A TCP server that runs ``session(conn)`` for each client, then closes it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    session(conn)  # type: ignore[operator]

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=10)
        server.close()


# --------------------------------------------------------------------------- the daemon


def sinks(folder: Path, http_port: int, nats_port: int, redis_port: int) -> str:
    return f"""
[handlers.hook]
plugin = "webhook"
url = "http://hookuser7:hookPASS789@127.0.0.1:{http_port}/in?token=hookTOK321"
headers = {{ X-Api-Key = "hookKEY456" }}
retries = 0
request_retries = 0

[handlers.bus]
plugin = "nats"
subject = "ticks"
url = "nats://natsuser7:natsPASS123@127.0.0.1:{nats_port}"
connect_timeout = "1s"
reconnect_wait = "200ms"

[handlers.cache]
plugin = "redis"
stream = "ticks"
url = "redis://redisuser7:redisPASS123@127.0.0.1:{redis_port}/0"
retries = 0

[handlers.fwd]
plugin = "websocket"
url = "ws://wsuser7:wsPASS123@127.0.0.1:{http_port}/feed?token=wsTOK123"
headers = {{ X-Api-Key = "wsKEY456" }}
reconnect = {{ initial = "100ms", max = "300ms" }}
timeout = "300ms"
retries = 0
"""


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    with notify_listener() as notify:
        yield notify


def test_no_sink_credential_in_logs_dead_letters_check_or_replay(
    tmp_path: Path, listener: NotifyListener
) -> None:
    with (
        upstream(tmp_path, tick_interval=0.05) as up,
        http_echo() as http_port,
        tcp_echo(_nats_session) as nats_port,
        tcp_echo(_redis_session) as redis_port,
    ):
        text = reference_config(
            up.url,
            tmp_path,
            tick_handlers=("archive", "hook", "bus", "cache", "fwd"),
            handlers_extra=sinks(tmp_path, http_port, nats_port, redis_port),
        ).replace('log_level = "info"\n', "")  # the default level
        config = tmp_path / "wsroute.toml"
        config.write_text(text)

        checked = subprocess.run(
            [WSROUTE, "check", "-c", str(config)], capture_output=True, text=True, timeout=60
        )
        assert checked.returncode == 0, checked.stderr
        assert leaks(checked.stdout + checked.stderr) == []

        dead = tmp_path / "dead.jsonl"
        env = daemon_environ(listener.path, None)
        with daemon(config, tmp_path / "daemon.log", env) as proc:
            listener.wait("READY", "1", timeout=30, sender=proc)
            wait_for(lambda: jsonl_lines(dead) >= 10, 30, "dead letters from the failing sinks")
            wait_for(
                lambda: (
                    {"nats_error", "redis_unavailable", "connect_failed"} <= set(proc.event_names())
                ),
                30,
                "the nats, redis and websocket sinks' failures",
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, proc.log_text()[-3000:]
            log = proc.log_text()

        assert leaks(log) == [], [line for line in log.splitlines() if leaks(line)][:5]
        letters = [json.loads(line) for line in dead.read_text().splitlines()]
        assert leaks(dead.read_text()) == []
        errors = {letter["handler"]: letter["error"] for letter in letters if letter.get("error")}
        # The webhook's endpoint quoted everything back; the error says so, masked.
        hook_error = errors["hook"]
        assert hook_error.startswith(
            "WebhookError: HTTP 400 Bad Request: rejected POST /in?token=***"
        )
        assert "X-Api-Key: ***" in hook_error
        assert "Authorization: ***" in hook_error
        # The shape of each URL is still there for an operator to read.
        assert "/feed?token=***" in log
        assert "ws://***@127.0.0.1:" in log
        assert "nats://***@127.0.0.1:" in log
        # The redis endpoint quoted the AUTH command; the NATS one the CONNECT line.
        assert "AUTH $10 *** $12 ***" in log
        assert '\\"pass\\": \\"***\\"' in log

        # Replayed into the webhook alone (the other sinks would wait out their outage):
        # it fails again, and so do the records of the handlers this config lacks.
        alone = tmp_path / "replay.toml"
        hook = sinks(tmp_path, http_port, nats_port, redis_port).split("[handlers.bus]")[0]
        alone.write_text(
            reference_config(up.url, tmp_path, tick_handlers=("hook",), handlers_extra=hook)
        )
        failed = tmp_path / "failed.jsonl"
        replayed = subprocess.run(
            [WSROUTE, "replay", "-c", str(alone), "--failed", str(failed), str(dead)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert replayed.returncode == 1, replayed.stderr[-3000:]  # every sink still fails
        assert "dead-lettered again" in replayed.stderr
        assert leaks(replayed.stdout + replayed.stderr) == []
        again = [json.loads(line) for line in failed.read_text().splitlines()]
        assert any("X-Api-Key: ***" in str(letter.get("error")) for letter in again)
        assert leaks(failed.read_text()) == []
