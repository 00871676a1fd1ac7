"""The ``websocket`` sink forwarding to a real WebSocket server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from wsroute import ConfigError, Message, Outgoing, SendError, Unavailable
from wsroute.plugins.websocket import WebsocketHandler, outgoing_for
from wsroute.testing import (
    ScriptedUpstream,
    build_handler,
    free_port,
    message,
    run_handler,
    run_outage,
    wait_until,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def started(options: dict[str, Any]) -> AsyncIterator[WebsocketHandler]:
    handler: WebsocketHandler = build_handler("websocket", options)
    async with run_handler(handler):
        yield handler


# --------------------------------------------------------------------------- frames (no I/O)


def test_frame_payload_is_the_raw_frame() -> None:
    assert outgoing_for(Message("c", 1, {}, raw=b"\x01\x02"), "frame") == Outgoing(raw=b"\x01\x02")
    assert outgoing_for(Message("c", "t", {}, raw='{"a":1}'), "frame") == Outgoing(text='{"a":1}')
    lifecycle = outgoing_for(Message("c", "$connected", {"outage": 1.0}), "frame")
    assert lifecycle.text is not None
    assert json.loads(lifecycle.text)["key"] == "$connected"


def test_body_and_record_payloads() -> None:
    msg = Message("c", "k", {"a": [1]}, raw=b"ignored", seq=3)
    assert outgoing_for(msg, "body") == Outgoing(json={"a": [1]}, has_json=True)
    assert outgoing_for(Message("c", None, b"\x00"), "body") == Outgoing(raw=b"\x00")
    record = outgoing_for(msg, "record")
    assert record.text is not None
    assert json.loads(record.text)["seq"] == 3


def test_takes_the_connection_options() -> None:
    with pytest.raises(ConfigError, match="ws://"):
        build_handler("websocket", {"url": "http://x"})
    with pytest.raises(ConfigError, match=r"reconnect\.max"):
        build_handler("websocket", {"url": "ws://x", "reconnect": {"max": "-"}})
    build_handler(
        "websocket",
        {"url": "ws://x", "headers": {"Authorization": "Bearer t"}, "reconnect": {"max": "5s"}},
    )


# --------------------------------------------------------------------------- a real server


@pytest.mark.anyio
async def test_forwards_frames_as_received_after_the_login() -> None:
    target = ScriptedUpstream()
    async with target.serve() as url:
        options = {"url": url, "on_connect": [{"json": {"login": "me"}}]}
        async with started(options) as handler:
            await handler.handle(message({}, raw=b"\x01\x00\x00\x00{}"))
            await handler.handle(message({"type": "news"}, raw='{"type": "news"}'))
            await wait_until(lambda: len(target.received) == 3)
    assert target.received == ['{"login":"me"}', b"\x01\x00\x00\x00{}", '{"type": "news"}']


@pytest.mark.anyio
async def test_write_confirmation_and_body_payload() -> None:
    target = ScriptedUpstream()
    options = {"confirm": "write", "payload": "body"}
    async with target.serve() as url, started({"url": url, **options}) as handler:
        for n in range(5):
            await handler.handle(message({"n": n}))
        await wait_until(lambda: len(target.received) == 5)
    assert [json.loads(f)["n"] for f in target.received] == [0, 1, 2, 3, 4]


@pytest.mark.anyio
async def test_a_frame_sent_as_the_connection_dies_is_not_counted_handled() -> None:
    target = ScriptedUpstream()
    async with target.serve() as url:
        options = {"url": url, "reconnect": {"initial": "50ms", "max": "100ms"}}
        async with started(options) as handler:
            await handler.handle(message({}, raw="one"))
            target.stall()  # "two" and the ping after it stay unread: no pong
            outcome: list[BaseException | None] = []

            async def send_two() -> None:
                try:
                    await handler.handle(message({}, raw="two"))
                except Unavailable as exc:
                    outcome.append(exc)
                else:
                    outcome.append(None)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_two)
                await anyio.wait_all_tasks_blocked()  # sent, waiting for the pong
                assert outcome == []
                target.drop()  # the connection dies with the frame unconfirmed
            assert len(outcome) == 1
            # An outage, not a failure: the daemon holds "two" and sends it again.
            assert isinstance(outcome[0], Unavailable)
            assert isinstance(outcome[0].__cause__, SendError)
            await wait_until(lambda: not handler.connection.connected)
            with anyio.fail_after(10):  # the next frame goes over the new connection
                await handler.handle(message({}, raw="three"))
    assert target.received == ["one", "three"]
    assert target.connections == 2


@pytest.mark.anyio
async def test_reconnects_and_logs_in_again() -> None:
    target = ScriptedUpstream()
    async with target.serve() as url:
        options = {
            "url": url,
            "on_connect": [{"text": "login"}],
            "reconnect": {"initial": "50ms", "max": "100ms"},
        }
        async with started(options) as handler:
            await handler.handle(message({}, raw="one"))
            target.drop()
            await wait_until(lambda: not handler.connection.connected)
            with anyio.fail_after(10):  # waits for the connection to come back
                await handler.handle(message({}, raw="two"))
            await wait_until(lambda: len(target.received) == 4)
    assert target.received == ["login", "one", "login", "two"]
    assert target.connections == 2


@pytest.mark.anyio
async def test_waits_for_the_server_within_the_handler_timeout() -> None:
    port = free_port()
    options = {"url": f"ws://127.0.0.1:{port}/", "reconnect": {"initial": "50ms", "max": "100ms"}}
    async with started(options) as handler:
        with pytest.raises(TimeoutError), anyio.fail_after(0.3):
            await handler.handle(message({}, raw="lost"))  # no server yet: the timeout ends it
        target = ScriptedUpstream(port=port)
        async with target.serve():
            with anyio.fail_after(10):
                await handler.handle(message({}, raw="late"))
            await wait_until(lambda: target.received == ["late"])


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
handlers = ["forward"]

[handlers.forward]
plugin = "websocket"
url = "${TARGET_URL}"
reconnect = { initial = "50ms", max = "100ms" }

[handlers.dlq]
plugin = "jsonl"
path = "${WSROUTE_TMP}/dead.jsonl"
"""


@pytest.mark.anyio
async def test_the_target_restarted_loses_nothing(wsroute_daemon: Any) -> None:
    target = ScriptedUpstream(port=free_port())
    env = {"TARGET_URL": f"ws://127.0.0.1:{target.port}/"}
    async with wsroute_daemon(CONFIG, upstream=ScriptedUpstream(), environ=env) as daemon:
        await run_outage(
            daemon, "forward", serve=target.serve, delivered=lambda: len(target.received)
        )
        dead_file = daemon.tmp_path / "dead.jsonl"
    assert [json.loads(f)["n"] for f in target.received] == [1, 2, 3]
    assert not dead_file.exists() or not dead_file.read_text()
