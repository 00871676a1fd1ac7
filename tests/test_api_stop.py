"""No API client holds the daemon: hostile clients against a real ``wsroute run``.

The test plays systemd (a notify socket of its own). Each hostile client —
``wsroute tap`` piped into a reader that stopped, a raw WebSocket tap that
never reads, a half-sent HTTP request, a ``/metrics`` reader that never
reads — sits on the TCP listener while a reload removes that listener
(READY=1 must follow, the clients cut off), then a second one sits on the Unix
socket while SIGTERM stops the daemon: exit 0 within ``shutdown_timeout`` +
1 s. A flood of 64 KiB frames keeps the taps' writes blocked. A tap, a half-sent
request and an unread answer that stall past the write deadline are dropped
while the daemon runs on.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wsroute.api.clients import WRITE_TIMEOUT, stop_grace
from wsroute.testing import free_port

from systemd_helpers import (
    WSROUTE,
    Daemon,
    NotifyListener,
    daemon,
    daemon_environ,
    notify_listener,
    short_dir,
    wait_for,
)

pytestmark = pytest.mark.slow

SHUTDOWN_TIMEOUT = 3.0
#: The promise: a stop ends this long after SIGTERM at the latest.
STOP_BOUND = SHUTDOWN_TIMEOUT + 1.0
START_TIMEOUT = 30.0

#: An upstream that floods: a 64 KiB JSON frame every 5 ms to every client,
#: until it exits on its own (an orphan never outlives the test run).
FLOOD_CODE = """\
import asyncio, sys
from pathlib import Path
from websockets.asyncio.server import serve

FRAME = '{"type": "d", "pad": "' + "x" * 65536 + '"}'

async def flood(ws):
    while True:
        await ws.send(FRAME)
        await asyncio.sleep(0.005)

async def main(url_file, lifetime):
    async with serve(flood, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        tmp = Path(url_file + ".tmp")
        tmp.write_text(f"ws://127.0.0.1:{port}/")
        tmp.replace(url_file)
        await asyncio.sleep(lifetime)

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""

PLUGIN = '''
class Noop:
    """Takes every message at once."""

    def __init__(self, options, ctx):
        pass

    async def handle(self, message):
        pass
'''

CONFIG = """
[daemon]
log_level = "info"
log_format = "json"
shutdown_timeout = "{shutdown}s"
dead_letter = "dlq"
plugin_paths = ["{plugins}"]

[daemon.api]
listen = {listen}
tap_over_tcp = true

[connections.up]
url = "{url}"
codec = "j"
close_timeout = "500ms"

[codecs.j]
type = "json"
key = "type"

[routes.flood]
key = "d"
handlers = ["noop"]

[handlers.noop]
plugin = "stoptest:Noop"

[handlers.dlq]
plugin = "jsonl"
path = "{root}/dead.jsonl"
"""


@dataclass
class Setup:
    root: Path
    sock: Path
    port: int
    url: str

    @property
    def config(self) -> Path:
        return self.root / "wsroute.toml"

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write(self, listen: list[str]) -> None:
        plugins = self.root / "plugins"
        if not plugins.exists():
            plugins.mkdir()
            (plugins / "stoptest.py").write_text(textwrap.dedent(PLUGIN))
            plugins.chmod(0o700)
        self.config.write_text(
            CONFIG.format(
                shutdown=SHUTDOWN_TIMEOUT,
                plugins=plugins,
                listen=json.dumps(listen),
                url=self.url,
                root=self.root,
            )
        )


@contextlib.contextmanager
def flood_upstream(folder: Path) -> Iterator[str]:
    url_file = folder / "flood.url"
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOD_CODE, str(url_file), "120"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield wait_for(
            lambda: url_file.exists() and url_file.read_text(), 20, "the flood upstream's URL"
        )
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with short_dir() as sockdir, flood_upstream(tmp_path) as url:
        yield Setup(tmp_path, sockdir / "api.sock", free_port(), url)


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    with notify_listener() as notify:
        yield notify


# --------------------------------------------------------------------------- hostile clients


def _queued(fd: int) -> int:
    """Bytes waiting to be read on a socket or a pipe (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def _connect(address: str) -> socket.socket:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address[5:])
    else:
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


class Hostile:
    """One client that misbehaves; :meth:`open` returns once it is doing so."""

    def open(self, address: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class RawTap(Hostile):
    """Upgrades to ``/tap`` by hand, then never reads: the daemon's writes block."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None

    def open(self, address: str) -> None:
        self.sock = sock = _connect(address)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                "GET /tap HTTP/1.1\r\nHost: wsroute\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        # The kernel's buffers fill with records nobody reads; past them, the
        # daemon's writes to this client cannot progress.
        wait_for(lambda: _queued(sock.fileno()) > 100_000, 20, "the tap's socket to fill")
        time.sleep(0.5)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class PipedTap(Hostile):
    """``wsroute tap`` with its output piped into a reader that stopped reading."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def open(self, address: str) -> None:
        self.proc = proc = subprocess.Popen(
            [WSROUTE, "tap", "--api", address],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        # The pipe (64 KiB) fills; the tap then blocks on its write and reads nothing more.
        wait_for(lambda: _queued(fd) >= 60_000, 20, "the tap's pipe to fill")
        time.sleep(1.0)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()


class HalfRequest(Hostile):
    """Sends the start of an HTTP request and nothing more."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None

    def open(self, address: str) -> None:
        self.sock = _connect(address)
        self.sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: wsroute\r\n")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class MetricsNonReader(Hostile):
    """Asks for ``/metrics`` and never reads the answer, nor closes."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None

    def open(self, address: str) -> None:
        self.sock = sock = _connect(address)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: wsroute\r\n\r\n")
        wait_for(lambda: _queued(sock.fileno()) > 0, 20, "the /metrics answer")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


HOSTILE: dict[str, Callable[[], Hostile]] = {
    "piped-tap": PipedTap,
    "raw-tap": RawTap,
    "half-request": HalfRequest,
    "metrics-non-reader": MetricsNonReader,
}


# --------------------------------------------------------------------------- tests


def _start(setup: Setup, listener: NotifyListener, proc: Daemon) -> None:
    listener.wait("READY", "1", timeout=START_TIMEOUT, sender=proc)
    wait_for(
        lambda: setup.sock.exists() and "api_listening" in proc.event_names(),
        START_TIMEOUT,
        "the API",
    )


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_api_client_holds_neither_a_reload_nor_the_stop(
    setup: Setup, listener: NotifyListener, kind: str
) -> None:
    setup.write([setup.tcp, f"unix:{setup.sock}"])
    env = daemon_environ(listener.path, None)
    with daemon(setup.config, setup.root / "daemon.log", env) as proc:
        _start(setup, listener, proc)

        # A reload that removes the listener the client holds completes: READY=1.
        first = HOSTILE[kind]()
        second = HOSTILE[kind]()
        try:
            first.open(setup.tcp)
            setup.write([f"unix:{setup.sock}"])
            mark = len(listener.received)
            began = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            ready = listener.wait("READY", "1", after=mark, timeout=20, sender=proc)
            took = listener.received[ready].at - began
            assert "reload failed" not in listener.received[ready].fields.get("STATUS", "")
            assert took < stop_grace(SHUTDOWN_TIMEOUT) + 1.0 + 2.0, took
            events = proc.events()
            assert "reload_applied" in [e.get("event") for e in events]
            assert any(
                e.get("event") == "api_closed" and e.get("address") == setup.tcp for e in events
            ), "the TCP listener was not closed"
            print(f"{kind}: reload removing its listener took {took:.2f} s")

            # SIGTERM with the same kind of client on the listener that remains.
            second.open(f"unix:{setup.sock}")
            mark = len(listener.received)
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(STOP_BOUND + 10) == 0, proc.log_text()[-3000:]
            took = time.monotonic() - began
            print(f"{kind}: SIGTERM to exit took {took:.2f} s")
            assert took <= STOP_BOUND, f"{kind}: the stop took {took:.2f} s"
            listener.wait("STOPPING", "1", after=mark, timeout=1)
        finally:
            first.close()
            second.close()
        names = proc.event_names()
        # Both times the client was still misbehaving when its listener closed.
        cut = [e for e in proc.events() if e.get("event") == "api_clients_cut_off"]
        assert [e["address"] for e in cut] == [setup.tcp, f"unix:{setup.sock}"], cut
        assert "shutdown_complete" in names
        assert "delivery_unbalanced" not in names
        assert "unexpected_error" not in names
        # Nothing was lost: the flood's messages were all handled, none dead-lettered.
        assert (
            not (setup.root / "dead.jsonl").exists() or not (setup.root / "dead.jsonl").read_text()
        )


def test_clients_that_stall_past_the_write_deadline_are_dropped(
    setup: Setup, listener: NotifyListener
) -> None:
    setup.write([f"unix:{setup.sock}"])
    env = daemon_environ(listener.path, None)
    with daemon(setup.config, setup.root / "daemon.log", env) as proc:
        _start(setup, listener, proc)
        tap = RawTap()
        # Two clients that never finish a request: dropped within the deadline too.
        half, unread = HalfRequest(), MetricsNonReader()
        try:
            began = time.monotonic()
            half.open(f"unix:{setup.sock}")
            unread.open(f"unix:{setup.sock}")
            tap.open(f"unix:{setup.sock}")
            wait_for(
                lambda: "api_client_dropped" in proc.event_names(),
                WRITE_TIMEOUT + 20,
                "the blocked tap to be dropped",
            )
            assert time.monotonic() - began >= WRITE_TIMEOUT
            dropped = next(e for e in proc.events() if e.get("event") == "api_client_dropped")
            assert dropped["endpoint"] == "/tap"
            wait_for(lambda: "tap_closed" in proc.event_names(), 10, "tap_closed")
            # Its socket was aborted: what the client reads ends (after what was queued).
            assert tap.sock is not None
            tap.sock.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                while tap.sock.recv(1 << 20):
                    pass
            for client in (half, unread):
                assert client.sock is not None
                client.sock.settimeout(WRITE_TIMEOUT + 10)
                with contextlib.suppress(ConnectionResetError):
                    while client.sock.recv(1 << 16):  # the answer, if any, then the end
                        pass
            assert time.monotonic() - began >= WRITE_TIMEOUT
        finally:
            tap.close()
            half.close()
            unread.close()
        # The daemon runs on and still answers.
        with _connect(f"unix:{setup.sock}") as sock:
            sock.settimeout(10)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: wsroute\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STOP_BOUND + 10) == 0, proc.log_text()[-3000:]
