"""``log_format = "journal"``: native journald entries, written by wsroute itself.

A real AF_UNIX datagram socket in a temporary folder stands in for journald's
(``WSROUTE_JOURNAL_SOCKET`` points the writer at it). The daemon runs as a real
``wsroute run`` subprocess with ``JOURNAL_STREAM`` set and ``log_format`` left
at ``auto``, against an upstream that first refuses the handshake (401: an
error), then accepts (``connected``: info) and closes with a two-line reason
quoting the secret header value (``connection_lost``: a warning). The test
parses the datagrams. Plus unit tests of the encoder, the field names, the
memfd path of a big entry, and the stderr fallback when the socket is gone.
"""

from __future__ import annotations

import array
import contextlib
import io
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from http import HTTPStatus
from pathlib import Path

import anyio
import pytest
import structlog
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from wsroute import logging as wslogging
from wsroute.logging import (
    JOURNAL_SOCKET_ENV,
    encode_journal_entry,
    journal_available,
    journal_field_name,
    journal_fields,
    register_secrets,
)

Entry = dict[str, list[str]]

WSROUTE = str(Path(sys.executable).with_name("wsroute"))
TOKEN = "journal-tok-5e4d3c2b1a"


def parse_entry(data: bytes) -> Entry:
    """Decode one native-protocol entry (both forms); a field may repeat."""
    fields: Entry = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = end + 1
        else:
            name = line
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 1 + 8
            value = data[start : start + size]
            assert data[start + size : start + size + 1] == b"\n"
            pos = start + size + 1
        fields.setdefault(name.decode("ascii"), []).append(value.decode("utf-8"))
    return fields


class FakeJournal:
    """A bound AF_UNIX datagram socket; reads datagrams and memfd-passed entries."""

    def __init__(self, folder: Path) -> None:
        self.path = str(folder / "journal.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.entries: list[Entry] = []
        self.memfds = 0

    def drain(self) -> list[Entry]:
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(1 << 24, socket.CMSG_SPACE(4 * 4))
            except BlockingIOError:
                return self.entries
            for level, kind, payload in ancdata:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % 4])
                    for fd in fds:
                        self.memfds += 1
                        with os.fdopen(fd, "rb") as memfd:
                            memfd.seek(0)  # journald maps it; the offset is the writer's
                            data += memfd.read()
            self.entries.append(parse_entry(data))

    def events(self, name: str) -> list[Entry]:
        return [e for e in self.drain() if e.get("EVENT") == [name]]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def journal() -> Iterator[FakeJournal]:
    # A short folder: a Unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="wsr-j-") as folder:
        fake = FakeJournal(Path(folder))
        try:
            yield fake
        finally:
            fake.close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("websockets").level)
    yield
    root.handlers[:], level, ws_level = saved
    root.setLevel(level)
    logging.getLogger("websockets").setLevel(ws_level)


# --- the encoder --------------------------------------------------------------


def test_simple_and_binary_forms() -> None:
    data = encode_journal_entry([("MESSAGE", "one line"), ("REASON", "two\nlines"), ("X", "")])
    assert data == (
        b"MESSAGE=one line\n" + b"REASON\n" + struct.pack("<Q", 9) + b"two\nlines\n" + b"X=\n"
    )
    assert parse_entry(data) == {"MESSAGE": ["one line"], "REASON": ["two\nlines"], "X": [""]}


def test_utf8_and_equals_signs_round_trip() -> None:
    fields = [("A", "é=ü"), ("B", "x\n=\ny")]
    assert parse_entry(encode_journal_entry(fields)) == {"A": ["é=ü"], "B": ["x\n=\ny"]}


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("connection", "CONNECTION"),
        ("up_for", "UP_FOR"),
        ("retry-after", "RETRY_AFTER"),
        ("handlers.archive", "HANDLERS_ARCHIVE"),
        ("_private", "F__PRIVATE"),
        ("2nd", "F_2ND"),
        ("", "F_"),
        ("message", "F_MESSAGE"),
        ("priority", "F_PRIORITY"),
        ("x" * 80, "X" * 64),
    ],
)
def test_field_names_follow_the_journals_rules(key: str, name: str) -> None:
    assert journal_field_name(key) == name


def test_fields_of_an_event() -> None:
    fields = journal_fields(
        {
            "connection": "exchange",
            "code": 1006,
            "reason": "",
            "cause": None,
            "extra": {"a": [1, 2]},
            "event": "connection_lost",
            "level": "warning",
            "timestamp": "2026-01-01T00:00:00Z",
            "pathname": "/x/connection.py",
            "lineno": 12,
            "func_name": "_closed",
        },
        "warning",
    )
    entry = dict(fields)
    assert entry["MESSAGE"] == (
        'connection_lost connection=exchange code=1006 reason="" extra={"a":[1,2]}'
    )
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "wsroute"
    assert entry["EVENT"] == "connection_lost"
    assert entry["CONNECTION"] == "exchange"
    assert entry["CODE"] == "1006"
    assert entry["EXTRA"] == '{"a":[1,2]}'
    assert (entry["CODE_FILE"], entry["CODE_LINE"], entry["CODE_FUNC"]) == (
        "/x/connection.py",
        "12",
        "_closed",
    )
    assert "CAUSE" not in entry  # None: left out
    assert "TIMESTAMP" not in entry  # journald has its own
    assert "2026" not in entry["MESSAGE"]


@pytest.mark.parametrize(
    ("level", "priority"),
    [("debug", "7"), ("info", "6"), ("warning", "4"), ("error", "3"), ("critical", "2")],
)
def test_priority_from_the_level(level: str, priority: str) -> None:
    assert dict(journal_fields({"event": "e", "level": level}, level))["PRIORITY"] == priority


def test_auto_needs_journal_stream_and_the_socket(journal: FakeJournal) -> None:
    assert journal_available({"JOURNAL_STREAM": "8:1"}, journal.path)
    assert not journal_available({}, journal.path)
    assert not journal_available({"JOURNAL_STREAM": "8:1"}, journal.path + ".missing")


# --- the configured pipeline, in-process ----------------------------------------


@pytest.mark.usefixtures("restore_logging")
def test_pipeline_masks_secrets_and_sends_tracebacks(journal: FakeJournal) -> None:
    secret = "journal-s3cret-X7"
    register_secrets([secret])
    stream = io.StringIO()
    wslogging.configure(
        "debug",
        "auto",
        stream=stream,
        environ={"JOURNAL_STREAM": "8:1"},
        journal_socket=journal.path,
    )
    log = structlog.get_logger("test").bind(connection="exchange")
    log.info("event", detail=f"value {secret}", nested={"a": [secret]}, token="plain")
    try:
        raise RuntimeError(f"server said {secret}\nsecond line")
    except RuntimeError:
        log.exception("crashed")
    logging.getLogger("websockets.client").warning("echo %s", secret)
    entries = journal.drain()
    assert stream.getvalue() == ""  # all of it went to the journal
    assert len(entries) == 3
    raw = json.dumps(entries)
    assert secret not in raw
    event, crashed, echo = entries
    assert event["MESSAGE"][0].startswith("event connection=exchange detail=")
    assert event["DETAIL"] == ["value ***"]
    assert event["TOKEN"] == ["***"]  # a secret-looking key
    assert event["CODE_FUNC"] == ["test_pipeline_masks_secrets_and_sends_tracebacks"]
    assert event["CODE_FILE"][0].endswith("test_journal.py")
    assert crashed["PRIORITY"] == ["3"]
    assert "RuntimeError: server said ***" in crashed["TRACEBACK"][0]
    assert crashed["MESSAGE"][0].startswith("crashed connection=exchange\nTraceback")
    assert "second line" in crashed["MESSAGE"][0]
    assert echo["MESSAGE"] == ["echo *** logger=websockets.client"]
    assert echo["PRIORITY"] == ["4"]
    assert echo["LOGGER"] == ["websockets.client"]


@pytest.mark.usefixtures("restore_logging")
def test_the_identifier_can_be_set_by_the_environment(journal: FakeJournal) -> None:
    environ = {wslogging.IDENTIFIER_ENV: "wsroute-eu"}
    wslogging.configure("info", "journal", environ=environ, journal_socket=journal.path)
    structlog.get_logger().info("hello")
    (entry,) = journal.drain()
    assert entry["SYSLOG_IDENTIFIER"] == ["wsroute-eu"]


@pytest.mark.usefixtures("restore_logging")
def test_an_entry_too_big_for_a_datagram_goes_through_a_memfd(journal: FakeJournal) -> None:
    wslogging.configure("info", "journal", stream=io.StringIO(), journal_socket=journal.path)
    big = "x" * (12 << 20)  # over the sender's 8 MiB buffer: EMSGSIZE for a datagram
    structlog.get_logger().info("big", payload=big)
    journal.memfds = 0
    (entry,) = journal.drain()
    assert entry["PAYLOAD"] == [big]
    assert journal.memfds == 1


@pytest.mark.usefixtures("restore_logging")
def test_without_the_socket_each_event_falls_back_to_a_json_line(tmp_path: Path) -> None:
    secret = "fallback-s3cret-Y8"
    register_secrets([secret])
    stream = io.StringIO()
    wslogging.configure("info", "journal", stream=stream, journal_socket=str(tmp_path / "gone"))
    structlog.get_logger().warning("connection_lost", connection="exchange", reason=secret)
    logging.getLogger("websockets.client").error("oops")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("<4>{")
    record = json.loads(lines[0][3:])
    assert record["event"] == "connection_lost"
    assert record["connection"] == "exchange"
    assert record["reason"] == "***"
    assert lines[1].startswith("<3>{")
    assert json.loads(lines[1][3:])["event"] == "oops"


@pytest.mark.usefixtures("restore_logging")
def test_a_journal_that_goes_away_and_comes_back(journal: FakeJournal) -> None:
    stream = io.StringIO()
    wslogging.configure("info", "journal", stream=stream, journal_socket=journal.path)
    log = structlog.get_logger()
    log.info("one")
    journal.close()
    os.unlink(journal.path)
    log.info("two")  # journald restarting: to stderr
    again = FakeJournal(Path(journal.path).parent)
    try:
        log.info("three")
        assert [e["EVENT"] for e in again.drain()] == [["three"]]
    finally:
        again.close()
    assert [json.loads(line[3:])["event"] for line in stream.getvalue().splitlines()] == ["two"]


# --- the real daemon -------------------------------------------------------------

CONFIG = """
[daemon]
log_level = "info"
shutdown_timeout = "1s"

[connections.exchange]
url = "{url}"
compression = "none"
close_timeout = "300ms"
headers = {{ Authorization = "Bearer {token}" }}
reconnect = {{ initial = "50ms", max = "100ms" }}

[routes.all]
handlers = ["out"]

[handlers.out]
plugin = "jsonl"
path = "{folder}/out.jsonl"
"""


class Upstream:
    """Refuses the first handshake with 401, then closes each session with a
    two-line reason that quotes the Authorization header it got."""

    def __init__(self) -> None:
        self.requests = 0
        self.seen: list[str] = []

    def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        self.requests += 1
        self.seen.append(request.headers.get("Authorization", ""))
        if self.requests == 1:
            return ws.respond(HTTPStatus.UNAUTHORIZED, "no\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        token = self.seen[-1].removeprefix("Bearer ")
        await anyio.sleep(0.1)
        await ws.close(4001, f"token {token}\nrevoked")

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        async with serve(
            self.handler, "127.0.0.1", 0, process_request=self.process_request
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            yield f"ws://127.0.0.1:{port}/"


@pytest.mark.anyio
async def test_the_daemon_under_journald_writes_native_entries(
    tmp_path: Path, journal: FakeJournal
) -> None:
    upstream = Upstream()
    async with upstream.serve() as url:
        config = tmp_path / "wsroute.toml"
        config.write_text(CONFIG.format(url=url, token=TOKEN, folder=tmp_path))
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        }
        env.update(JOURNAL_STREAM="8:424242", **{JOURNAL_SOCKET_ENV: journal.path})
        err_path = tmp_path / "stderr"
        with err_path.open("wb") as err:
            proc = await anyio.open_process(
                [WSROUTE, "run", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        try:
            with anyio.fail_after(20):
                while not any(e.get("CODE") == ["4001"] for e in journal.events("connection_lost")):
                    await anyio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                with anyio.move_on_after(5):
                    await proc.wait()
    entries = journal.drain()
    assert upstream.seen[0] == f"Bearer {TOKEN}"  # there was something to leak
    assert TOKEN not in json.dumps(entries)
    assert TOKEN not in err_path.read_text(errors="replace")
    assert "connection_lost" not in err_path.read_text(errors="replace")  # not on stderr too
    for entry in entries:
        assert entry["SYSLOG_IDENTIFIER"] == ["wsroute"]
        assert entry["MESSAGE"][0].startswith(entry["EVENT"][0])
        assert "timestamp" not in entry["MESSAGE"][0]

    (rejected, *_) = journal.events("handshake_rejected")
    assert rejected["PRIORITY"] == ["3"]
    assert rejected["STATUS"] == ["401"]
    assert rejected["CONNECTION"] == ["exchange"]

    (connected, *_) = journal.events("connected")
    assert connected["PRIORITY"] == ["6"]
    assert connected["MESSAGE"][0].startswith("connected connection=exchange ")
    assert connected["CODE_FILE"][0].endswith("connection.py")

    lost = next(e for e in journal.events("connection_lost") if e.get("CODE") == ["4001"])
    assert lost["PRIORITY"] == ["4"]
    assert lost["CONNECTION"] == ["exchange"]
    assert lost["REASON"] == ["token ***\nrevoked"]  # binary form, round-tripped
    assert lost["MESSAGE"][0].startswith(
        'connection_lost connection=exchange code=4001 reason="token ***\\nrevoked"'
    )
