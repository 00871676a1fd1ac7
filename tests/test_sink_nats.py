"""The ``nats`` sink against a real nats-server (JetStream on) started by the tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import nats
import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.errors import NoStreamResponseError

from wsroute import ConfigError, Message, Unavailable
from wsroute.plugins.nats import NatsHandler, payload_and_headers
from wsroute.testing import (
    RecordingContext,
    ScriptedUpstream,
    build_handler,
    free_port,
    message,
    run_handler,
    run_outage,
)

from conftest import need, tool_path

NATS_SERVER = tool_path("nats-server")
needs_nats = need("nats-server")  # skips without it; fails under CI


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class NatsServer:
    """A nats-server with JetStream on 127.0.0.1, storing in tmp_path; stoppable, restartable."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert NATS_SERVER is not None
        self.process = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(5) == b"INFO ":
                        return
            except OSError:
                pass
            assert self.process.poll() is None, "nats-server exited at start"
            time.sleep(0.02)
        raise TimeoutError("nats-server did not greet within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def nats_client(server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(server.url, allow_reconnect=False)
    try:
        yield nc
    finally:
        await nc.close()


@asynccontextmanager
async def started(
    options: dict[str, Any], ctx: RecordingContext | None = None
) -> AsyncIterator[Any]:
    handler = build_handler("nats", options, ctx=ctx)
    async with run_handler(handler):
        yield handler


# --------------------------------------------------------------------------- payload (no I/O)


def test_record_payload_is_the_json_record() -> None:
    msg = Message("exchange", 2, {"p": 1}, raw=b"\x02\x00\x00\x00{}", seq=5, received_at=1.5)
    data, headers = payload_and_headers(msg, "record")
    assert headers is None
    assert json.loads(data)["body"] == {"p": 1}


def test_frame_payload_is_raw_with_metadata_headers() -> None:
    raw = b"\x02\x00\x00\x00{}"
    msg = Message("exchange", 2, {}, raw=raw, seq=5, received_at=1700000000.5)
    data, headers = payload_and_headers(msg, "frame")
    assert data == raw
    assert headers == {
        "connection": "exchange",
        "key": "2",
        "seq": "5",
        "received_at": "1700000000.5",
    }
    text = Message("exchange", "news", {}, raw='{"type": "news"}')
    data, headers = payload_and_headers(text, "frame")
    assert (data, headers and headers["kind"]) == (b'{"type": "news"}', "text")


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="subject"):
        build_handler("nats", {"subject": "has space"})
    with pytest.raises(ConfigError, match="nats://"):
        build_handler("nats", {"subject": "s", "url": "http://host"})
    with pytest.raises(ConfigError, match="missing required key"):
        build_handler("nats", {})


CHECK_CONFIG = '[handlers.q]\nplugin = "nats"\nsubject = "s"\n'


def test_missing_extra_is_named_by_check(tmp_path: Path) -> None:
    # The client library hidden from a real `wsroute check` in a subprocess.
    config = tmp_path / "wsroute.toml"
    config.write_text(CHECK_CONFIG)
    code = (
        "import sys; sys.modules['nats'] = None; from wsroute.cli import main; "
        "sys.exit(main(['check', '-c', sys.argv[1]]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78
    assert "pip install 'wsroute[nats]'" in result.stderr


# --------------------------------------------------------------------------- real NATS


@needs_nats
@pytest.mark.anyio
async def test_publish_is_flushed_to_the_server(nats_server: NatsServer) -> None:
    async with nats_client(nats_server) as nc:
        sub = await nc.subscribe("ticks.raw")
        await nc.flush()
        options = {"url": nats_server.url, "subject": "ticks.raw", "payload": "frame"}
        async with started(options) as handler:
            await handler.handle(message({}, key=1, raw=b"\x01\x00\x00\x00{}", seq=3))
            # Still running (stop() would flush too): handle() returned, so the
            # server has it, and routed it to us ahead of the answer to our ping.
            await nc.flush()
            assert sub.pending_msgs == 1
            got = [await sub.next_msg(timeout=1)]
    assert got[0].data == b"\x01\x00\x00\x00{}"
    assert got[0].headers is not None
    assert (got[0].headers["seq"], got[0].headers["key"]) == ("3", "1")


@needs_nats
@pytest.mark.anyio
async def test_jetstream_publish_is_acked_and_deduplicated(nats_server: NatsServer) -> None:
    async with nats_client(nats_server) as nc:
        js = nc.jetstream()
        await js.add_stream(name="TICKS", subjects=["ticks.>"])
        options = {"url": nats_server.url, "subject": "ticks.js", "jetstream": True}
        async with started(options) as handler:
            msg = message({"n": 1}, key="tick", seq=1, received_at=1700000000.0)
            await handler.handle(msg)
            await handler.handle(msg)  # a retry of the same message: dropped as a duplicate
            await handler.handle(message({"n": 2}, key="tick", seq=2))
        info = await js.stream_info("TICKS")
        assert info.state.messages == 2
        first = await js.get_msg("TICKS", 1)
    assert first.data is not None
    assert json.loads(first.data)["body"] == {"n": 1}


@needs_nats
@pytest.mark.anyio
async def test_jetstream_without_a_stream_is_an_outage(nats_server: NatsServer) -> None:
    options = {"url": nats_server.url, "subject": "nowhere", "jetstream": True}
    async with started(options) as handler:
        # nats-server answers "no responders" (or nothing, by the ack timeout): what an
        # election looks like too, so the daemon holds the message and waits.
        with pytest.raises(Unavailable) as info:
            await handler.handle(message({"n": 1}))
    assert isinstance(info.value.__cause__, NoStreamResponseError | NoRespondersError)


@needs_nats
@pytest.mark.anyio
async def test_server_down_at_start_then_up(nats_server: NatsServer) -> None:
    nats_server.stop()
    options = {"url": nats_server.url, "subject": "late", "reconnect_wait": "100ms"}
    async with started(options) as handler:  # start() does not wait for the server
        assert isinstance(handler, NatsHandler)
        with pytest.raises(Unavailable), anyio.fail_after(3):
            await handler.handle(message({"n": 1}))  # an outage, after a second's grace
        await anyio.to_thread.run_sync(nats_server.start)
        with anyio.fail_after(10):
            await handler.handle(message({"n": 2}))
        assert handler.connected


@needs_nats
@pytest.mark.anyio
async def test_stop_while_still_connecting(nats_server: NatsServer) -> None:
    nats_server.stop()
    options = {"url": nats_server.url, "subject": "s", "reconnect_wait": "50ms"}
    handler = build_handler("nats", options)
    with anyio.fail_after(5):
        async with run_handler(handler):
            await anyio.sleep(0.2)  # in the middle of its connect attempts
            assert not handler.connected
    # Stopped means no more attempts: a server that comes up now gets no client.
    await anyio.to_thread.run_sync(nats_server.start)
    await anyio.sleep(0.5)  # ten reconnect_wait periods
    assert not handler.connected


# --------------------------------------------------------------------------- the daemon, an outage

CONFIG = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "5s"

[connections.up]
url = "${WSROUTE_UPSTREAM}"
codec = "json"
ping_interval = 0

[routes.all]
handlers = ["bus"]

[handlers.bus]
plugin = "nats"
url = "${NATS_URL}"
subject = "ticks.daemon"
jetstream = true
reconnect_wait = "100ms"

[handlers.dlq]
plugin = "jsonl"
path = "${WSROUTE_TMP}/dead.jsonl"
"""


@needs_nats
@pytest.mark.anyio
async def test_an_outage_holds_the_message_then_publishes_it(
    nats_server: NatsServer, wsroute_daemon: Any
) -> None:
    async with nats_client(nats_server) as nc:
        await nc.jetstream().add_stream(name="DAEMON", subjects=["ticks.daemon"])
    env = {"NATS_URL": nats_server.url}
    async with wsroute_daemon(CONFIG, upstream=ScriptedUpstream(), environ=env) as daemon:
        await run_outage(
            daemon,
            "bus",
            ready=lambda: daemon.handler("bus").connected,
            stop=nats_server.stop,
            start=nats_server.start,  # JetStream state kept in tmp_path
        )
        dead_file = daemon.tmp_path / "dead.jsonl"
    assert not dead_file.exists() or not dead_file.read_text()
    async with nats_client(nats_server) as nc:
        js = nc.jetstream()
        bodies = [
            json.loads((await js.get_msg("DAEMON", seq)).data or b"")["body"]["n"]
            for seq in (1, 2, 3)
        ]
        assert (await js.stream_info("DAEMON")).state.messages == 3
    assert bodies == [1, 2, 3]
