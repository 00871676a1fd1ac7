"""The notify client against a real AF_UNIX datagram socket playing systemd."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from wsroute.notify import (
    CHILD_UNSAFE_VARIABLES,
    Notifier,
    child_environ,
    extend_timeout_loop,
    watchdog_loop,
)

# AF_UNIX paths are limited to 108 bytes; a long test name can push tmp_path past it.
MAX_SUN_PATH = 100


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Receiver:
    """The systemd side: a bound datagram socket and its ``$NOTIFY_SOCKET`` value."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket

    def recv(self) -> str:
        self.sock.settimeout(5.0)
        return self.sock.recv(65536).decode()

    def fields(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.recv().split("\n"))

    def assert_empty(self) -> None:
        self.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.sock.recv(65536)


@pytest.fixture
def socket_dir(tmp_path: Path) -> Iterator[Path]:
    if len(str(tmp_path / "notify")) < MAX_SUN_PATH:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="wsn") as short:
        yield Path(short)


@pytest.fixture
def receiver(socket_dir: Path) -> Iterator[Receiver]:
    path = socket_dir / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield Receiver(sock, str(path))


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"wsroute-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield Receiver(sock, "@" + name)


def test_disabled_without_notify_socket() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready("up") is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    notifier.close()


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234", "@"])
def test_unusable_address_disables(value: str) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.send(READY=1) is False


def test_lifecycle_messages_in_order(receiver: Receiver) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": receiver.notify_socket})
    assert notifier.enabled
    assert notifier.ready("2 connections up") is True
    assert receiver.recv() == "READY=1\nSTATUS=2 connections up"
    assert notifier.status("1 up, 1 connecting") is True
    assert receiver.recv() == "STATUS=1 up, 1 connecting"
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = receiver.fields()
    assert list(fields) == ["RELOADING", "MONOTONIC_USEC"]
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    assert notifier.ready() is True
    assert receiver.recv() == "READY=1"
    assert notifier.watchdog() is True
    assert receiver.recv() == "WATCHDOG=1"
    assert notifier.stopping() is True
    assert receiver.recv() == "STOPPING=1"
    assert notifier.extend_timeout(2.5) is True
    assert receiver.recv() == "EXTEND_TIMEOUT_USEC=2500000"
    receiver.assert_empty()
    notifier.close()


def test_abstract_socket(abstract_receiver: Receiver) -> None:
    with Notifier.from_environ({"NOTIFY_SOCKET": abstract_receiver.notify_socket}) as notifier:
        assert notifier.enabled
        assert notifier.ready() is True
    assert abstract_receiver.recv() == "READY=1"


def test_send_keeps_field_order_and_flattens_newlines(receiver: Receiver) -> None:
    notifier = Notifier(receiver.notify_socket)
    assert notifier.send(STATUS="two\nlines\r\nhere", ERRNO=0, READY=True) is True
    assert receiver.recv() == "STATUS=two lines  here\nERRNO=0\nREADY=1"
    assert notifier.send() is False
    notifier.close()


def test_status_skips_repeats(receiver: Receiver) -> None:
    notifier = Notifier(receiver.notify_socket)
    assert notifier.status("a") is True
    assert notifier.status("a") is True
    assert notifier.status("b") is True
    assert notifier.ready("b") is True
    assert notifier.status("b") is True
    assert [receiver.recv() for _ in range(3)] == ["STATUS=a", "STATUS=b", "READY=1\nSTATUS=b"]
    receiver.assert_empty()
    notifier.close()


def test_from_environ_unsets_variables() -> None:
    env = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
        "PATH": "/usr/bin",
    }
    notifier = Notifier.from_environ(env)
    assert env == {"PATH": "/usr/bin"}
    assert notifier.enabled
    assert notifier.watchdog_interval == 15.0

    kept = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000"}
    notifier = Notifier.from_environ(kept, unset=False)
    assert kept == {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000"}
    assert notifier.watchdog_interval == 1.0


def test_from_os_environ_hides_variables_from_subprocesses(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.notify_socket)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier.from_environ()
    assert notifier.enabled
    assert notifier.watchdog_interval == 2.0
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        assert name not in os.environ
    code = "import os; print(os.environ.get('NOTIFY_SOCKET'), os.environ.get('WATCHDOG_USEC'))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "None None"
    assert notifier.ready() is True
    assert receiver.recv() == "READY=1"
    notifier.close()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),
        ("30000000", "garbage", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        (None, "self", None),
    ],
)
def test_watchdog_pid_semantics(usec: str | None, pid: str | None, expected: float | None) -> None:
    env = {"NOTIFY_SOCKET": "@wsroute-watchdog-test"}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if pid == "self":
        env["WATCHDOG_PID"] = str(os.getpid())
    elif pid == "other":
        env["WATCHDOG_PID"] = str(os.getpid() + 1)
    elif pid is not None:
        env["WATCHDOG_PID"] = pid
    assert Notifier.from_environ(env).watchdog_interval == expected


def test_no_watchdog_without_notify_socket() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "30000000"})
    assert notifier.watchdog_interval is None


def test_vanished_socket_never_raises_and_logs_once(socket_dir: Path) -> None:
    path = socket_dir / "gone"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    notifier = Notifier(str(path))
    assert notifier.ready() is True
    sock.close()
    path.unlink()
    with capture_logs() as logs:
        assert notifier.watchdog() is False
        assert notifier.status("still here") is False
        assert notifier.stopping() is False
    assert [entry["event"] for entry in logs] == ["notify_send_failed"]
    assert logs[0]["log_level"] == "debug"

    # The receiver comes back: sends work again, and the next failure is logged anew.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as again:
        again.bind(str(path))
        assert notifier.status("still here") is True
        assert again.recv(65536) == b"STATUS=still here"
    path.unlink()
    with capture_logs() as logs:
        assert notifier.watchdog() is False
    assert [entry["event"] for entry in logs] == ["notify_send_failed"]
    notifier.close()


def test_closed_notifier_sends_nothing(receiver: Receiver) -> None:
    notifier = Notifier(receiver.notify_socket)
    notifier.close()
    notifier.close()
    assert notifier.ready() is False
    assert notifier.status("x") is False
    receiver.assert_empty()


def test_child_environ() -> None:
    env = dict.fromkeys(CHILD_UNSAFE_VARIABLES, "x")
    env |= {"PATH": "/usr/bin", "HOME": "/var/lib/wsroute"}
    clean = child_environ(env)
    assert clean == {"PATH": "/usr/bin", "HOME": "/var/lib/wsroute"}
    assert set(CHILD_UNSAFE_VARIABLES) <= set(env)  # the input is not changed
    assert set(CHILD_UNSAFE_VARIABLES) >= {
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    }


def test_child_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("WSROUTE_TEST_KEEP", "yes")
    clean = child_environ()
    assert "LISTEN_FDS" not in clean
    assert clean["WSROUTE_TEST_KEEP"] == "yes"
    assert os.environ["LISTEN_FDS"] == "1"


async def _receive(receiver: Receiver, count: int) -> list[str]:
    receiver.sock.setblocking(False)
    messages: list[str] = []
    with anyio.fail_after(10):
        while len(messages) < count:
            await anyio.wait_readable(receiver.sock)
            messages.append(receiver.sock.recv(65536).decode())
    return messages


@pytest.mark.anyio
async def test_watchdog_loop_pings_from_the_event_loop(receiver: Receiver) -> None:
    notifier = Notifier(receiver.notify_socket, watchdog_interval=0.02)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watchdog_loop, notifier)
        assert await _receive(receiver, 3) == ["WATCHDOG=1"] * 3
        tg.cancel_scope.cancel()
    notifier.close()


@pytest.mark.anyio
async def test_watchdog_loop_returns_without_watchdog(receiver: Receiver) -> None:
    notifier = Notifier(receiver.notify_socket)
    with anyio.fail_after(5):
        await watchdog_loop(notifier)
    receiver.assert_empty()
    with anyio.fail_after(5):
        await watchdog_loop(Notifier(None, watchdog_interval=1.0))


@pytest.mark.anyio
async def test_extend_timeout_loop(receiver: Receiver) -> None:
    notifier = Notifier(receiver.notify_socket)
    async with anyio.create_task_group() as tg:
        tg.start_soon(extend_timeout_loop, notifier, 0.02)
        assert await _receive(receiver, 2) == ["EXTEND_TIMEOUT_USEC=40000"] * 2
        tg.cancel_scope.cancel()
    with anyio.fail_after(5):
        await extend_timeout_loop(Notifier(None))
    notifier.close()
