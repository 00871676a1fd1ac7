"""Playing systemd in tests: a notify socket that records, the daemon as a real
process, and the reference upstream in a process of its own.

Used by tests/test_systemd_notify.py (no root needed) and
tests/test_systemd_nspawn.py (a real systemd in a container).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from wsroute.notify import CHILD_UNSAFE_VARIABLES

WSROUTE = str(Path(sys.executable).with_name("wsroute"))

#: The reference upstream as a script: it writes its URL, then the number of
#: connections it has accepted whenever that changes, to files (atomically), so
#: a test in another process, or a container's host, can read both. It exits
#: on its own after ``lifetime`` seconds, so an orphan never outlives a test run.
UPSTREAM_CODE = """\
import sys
from pathlib import Path

import anyio

from wsroute.demo import ReferenceUpstream


def publish(path, text):
    tmp = Path(path + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


async def main(tick, url_file, count_file, lifetime):
    upstream = ReferenceUpstream(tick_interval=tick)
    with anyio.move_on_after(lifetime):
        async with upstream.serve() as url:
            publish(count_file, "0")
            publish(url_file, url)
            seen = 0
            while True:
                if upstream.connections != seen:
                    seen = upstream.connections
                    publish(count_file, str(seen))
                await anyio.sleep(0.02)


anyio.run(main, float(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]))
"""


#: Handlers that misbehave on purpose, for a ``plugin_paths`` folder (as ``probes.py``).
PROBES = '''\
"""Test handlers: one blocks the event loop, one is slow."""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from wsroute import Duration


def _publish(path, text):
    tmp = Path(path + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# What a plugin (or a process it starts) sees while its module is imported.
if os.environ.get("WSROUTE_TEST_IMPORT_RECORD"):
    _publish(os.environ["WSROUTE_TEST_IMPORT_RECORD"], json.dumps(sorted(os.environ)))


class Blocker:
    """Blocks the event loop (time.sleep in a coroutine) once, on message ``skip + 1``.

    Before that it starts a child process the ordinary way (inheriting the
    environment); afterwards it writes to ``record`` which variables the child
    and the plugin saw. With ``once_file``, it blocks only if that file does
    not exist yet, and creates it first: once across restarts.
    """

    @dataclass
    class Options:
        sleep: Duration = Duration(2.0)
        skip: int = 0
        record: str = ""
        once_file: str = ""

    def __init__(self, options, ctx):
        self.options = options
        self.seen = 0

    async def handle(self, message):
        self.seen += 1
        if self.seen != self.options.skip + 1:
            return
        if self.options.once_file:
            if os.path.exists(self.options.once_file):
                return
            _publish(self.options.once_file, "blocked")
        child = subprocess.run(
            [sys.executable, "-c", "import json, os; print(json.dumps(sorted(os.environ)))"],
            capture_output=True, text=True, timeout=30, check=True,
        )
        start = time.monotonic()
        time.sleep(self.options.sleep)  # on purpose: blocks the whole event loop
        end = time.monotonic()
        record = {
            "start": start,
            "end": end,
            "child_environ": json.loads(child.stdout),
            "plugin_environ": sorted(os.environ),
        }
        if self.options.record:
            _publish(self.options.record, json.dumps(record))


class Slow:
    """Takes ``delay`` per message (without blocking the loop); counts what it handled."""

    @dataclass
    class Options:
        delay: Duration = Duration(0.3)
        record: str = ""

    def __init__(self, options, ctx):
        self.options = options
        self.handled = 0

    async def handle(self, message):
        await anyio.sleep(self.options.delay)
        self.handled += 1
        _publish(self.options.record, str(self.handled))
'''


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll ``predicate()`` until it returns something truthy; return that.

    Fails the test with ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A fresh folder with a short path: AF_UNIX socket paths stop at 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="wsn") as folder:
        yield Path(folder)


# --------------------------------------------------------------------------- notify


@dataclass(frozen=True)
class Datagram:
    """One notification as systemd would receive it, stamped on arrival (CLOCK_MONOTONIC)."""

    at: float
    fields: dict[str, str]

    def has(self, key: str, value: str | None = None) -> bool:
        if key not in self.fields:
            return False
        return value is None or self.fields[key] == value


def parse_datagram(data: bytes) -> dict[str, str]:
    """``KEY=VALUE`` lines; a line without ``=`` is kept with an empty value."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        if line:
            key, _, value = line.partition("=")
            fields[key] = value
    return fields


class NotifyListener:
    """The systemd side of ``$NOTIFY_SOCKET``: a bound datagram socket read by a thread.

    Every datagram is recorded with its arrival time, so tests can assert the
    order of notifications and the gaps between watchdog pings.
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.05)
        self._received: list[Datagram] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            datagram = Datagram(time.monotonic(), parse_datagram(data))
            with self._lock:
                self._received.append(datagram)

    @property
    def received(self) -> list[Datagram]:
        """A snapshot of everything received so far, in arrival order."""
        with self._lock:
            return list(self._received)

    def wait(
        self,
        key: str,
        value: str | None = None,
        *,
        after: int = 0,
        timeout: float = 20.0,
        sender: Daemon | None = None,
    ) -> int:
        """Index of the first datagram at or after index ``after`` that has ``key``
        (with ``value``, if given); fails the test after ``timeout`` seconds, or
        as soon as ``sender`` has exited without sending it (with its log)."""

        def find() -> int | None:
            for index, datagram in enumerate(self.received[after:], start=after):
                if datagram.has(key, value):
                    return index + 1  # truthy even for index 0
            if sender is not None and not sender.running():
                time.sleep(0.1)  # a datagram sent just before the exit may still be read
                if not any(d.has(key, value) for d in self.received[after:]):
                    raise AssertionError(
                        f"wsroute exited with {sender.proc.returncode} before {what}; "
                        f"log:\n{sender.log_text()[-3000:]}"
                    )
            return None

        what = f"{key}={value if value is not None else '*'} (after #{after})"
        try:
            return int(wait_for(find, timeout, what)) - 1
        except AssertionError as exc:
            raise AssertionError(f"{exc}; received: {self.describe()}") from None

    def count(self, key: str, value: str | None = None, *, after: int = 0) -> int:
        return sum(1 for d in self.received[after:] if d.has(key, value))

    def describe(self) -> str:
        """The datagrams received so far, one per line with its arrival time (for failures)."""
        received = self.received
        if not received:
            return "(nothing)"
        start = received[0].at
        return "\n" + "\n".join(
            f"  #{i} +{d.at - start:.3f}s {d.fields}" for i, d in enumerate(received)
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@contextlib.contextmanager
def notify_listener() -> Iterator[NotifyListener]:
    with short_dir() as folder:
        listener = NotifyListener(folder / "notify")
        try:
            yield listener
        finally:
            listener.close()


# --------------------------------------------------------------------------- processes


class Upstream:
    """:class:`wsroute.demo.ReferenceUpstream` in a child process (see ``UPSTREAM_CODE``)."""

    def __init__(self, folder: Path, *, tick_interval: float = 0.02, lifetime: float = 120) -> None:
        self._url_file = folder / "upstream.url"
        self._count_file = folder / "upstream.count"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                UPSTREAM_CODE,
                str(tick_interval),
                str(self._url_file),
                str(self._count_file),
                str(lifetime),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self.url: str = wait_for(self._read_url, 20, "the upstream's URL")
        except BaseException:
            self.close()
            raise

    def _read_url(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the upstream exited with {self.proc.returncode}")
        return self._url_file.read_text() if self._url_file.exists() else None

    @property
    def connections(self) -> int:
        """How many WebSocket connections the upstream has accepted so far
        (as of its last report, at most 20 ms old)."""
        return int(self._count_file.read_text())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def upstream(folder: Path, **kwargs: Any) -> Iterator[Upstream]:
    up = Upstream(folder, **kwargs)
    try:
        yield up
    finally:
        up.close()


def daemon_environ(notify_socket: str, watchdog_usec: int | None, **extra: str) -> dict[str, str]:
    """The test's environment as systemd would pass it to the unit's main process."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CHILD_UNSAFE_VARIABLES and k != "JOURNAL_STREAM"
    }
    env["NOTIFY_SOCKET"] = notify_socket
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    env.update(extra)
    return env


class Daemon:
    """``wsroute run -c CONFIG`` as a real process; its log (JSON lines) goes to a file."""

    def __init__(self, config: Path, log: Path, env: Mapping[str, str]) -> None:
        self.log_path = log
        self._log: IO[bytes] = open(log, "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [WSROUTE, "run", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log records written so far (a partly written last line is skipped)."""
        out = []
        for line in self.log_text().splitlines():
            start = line.find("{")
            if start < 0:
                continue
            with contextlib.suppress(ValueError):
                out.append(json.loads(line[start:]))
        return out

    def event_names(self) -> list[str]:
        return [str(e.get("event")) for e in self.events()]

    def send_signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"wsroute did not exit within {timeout} s; log:\n{self.log_text()[-3000:]}"
            ) from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


@contextlib.contextmanager
def daemon(config: Path, log: Path, env: Mapping[str, str]) -> Iterator[Daemon]:
    proc = Daemon(config, log, env)
    try:
        yield proc
    finally:
        proc.close()


def jsonl_lines(path: Path) -> int:
    """Complete lines in a jsonl file (0 if it does not exist yet)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def reference_config(
    url: str,
    folder: Path | str,
    *,
    tick_handlers: Sequence[str] = ("archive",),
    connection_extra: str = "",
    daemon_extra: str = "",
    handlers_extra: str = "",
) -> str:
    """A config for the reference upstream: log in, subscribe, route ticks (key 1).

    ``folder`` holds the jsonl files (``archive`` and the dead letters ``dlq``);
    it may be a string such as ``${STATE_DIRECTORY}``.
    """
    routed = ", ".join(json.dumps(h) for h in tick_handlers)
    return f"""
[daemon]
log_level = "info"
log_format = "json"
dead_letter = "dlq"
{daemon_extra}

[connections.up]
url = "{url}"
codec = "exchange"
reconnect = {{ initial = "200ms", max = "1s" }}
{connection_extra}
[[connections.up.on_connect]]
json = {{ role = "admin", user_id = "notify-test" }}
[[connections.up.on_connect]]
struct = {{ format = "<i", values = [2] }}
json = ["first"]

[codecs.exchange]
type = "struct"
header = "<i"
fields = ["opcode"]

[routes.ticks]
key = 1
handlers = [{routed}]

[handlers.archive]
plugin = "jsonl"
path = "{folder}/archive.jsonl"

[handlers.dlq]
plugin = "jsonl"
path = "{folder}/dead.jsonl"
{handlers_extra}
"""
