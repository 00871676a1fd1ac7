"""The built-in sinks' ``handle_batch``, through the daemon's delivery (``testing.deliver``).

Real targets: a file for ``jsonl``, a child process for ``exec``, an HTTP
server on 127.0.0.1 for ``webhook``.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from test_sink_webhook import HttpServer

from wsroute import ConfigError, Frame, Message, StructCodec
from wsroute.codec import LAZY_FROM
from wsroute.testing import build_handler, deliver, message, run_handler

pytestmark = pytest.mark.anyio

BATCH = {"batch": {"max": 10, "wait": "10ms"}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ticks(count: int) -> list[Message]:
    return [message({"type": "tick", "n": n}, key="tick", seq=n) for n in range(1, count + 1)]


def lazy(seq: int) -> Message:
    codec = StructCodec(StructCodec.Options(header="<i", fields=["opcode"]))
    body = json.dumps({"n": seq, "pad": "x" * LAZY_FROM}).encode()
    return codec.decode(Frame("up", struct.pack("<i", 5) + body, seq, 1.0))


async def test_jsonl_writes_a_batch_in_one_write_without_building_bodies(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    handler = build_handler("jsonl", {"path": str(path)})
    messages = [lazy(seq) for seq in range(1, 8)]
    async with run_handler(handler):
        result = await deliver(handler, messages, BATCH)
    assert result.handled == 7
    assert handler._appended == 1  # one write for the seven lines
    assert not any(m.body_built for m in messages)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["body"]["n"] for line in lines] == list(range(1, 8))


def test_batch_is_a_delivery_key_not_an_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch"):
        build_handler("jsonl", {"path": str(tmp_path / "x"), "batch": {"max": 2}})


CHILD = """
import sys
for line in sys.stdin:
    if '"poison"' in line:
        sys.exit(3)
    print("ok", flush=True)
"""


async def test_exec_answers_each_line_and_a_poison_line_is_dead_lettered_alone(
    tmp_path: Path,
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    handler = build_handler(
        "exec",
        {"command": [sys.executable, str(script)], "ack": True, "restart": {"initial": "50ms"}},
    )
    messages = ticks(4)
    messages.append(message({"type": "poison"}, key="poison", seq=5))
    async with run_handler(handler):
        result = await deliver(handler, messages, {**BATCH, "retries": 1, "timeout": "5s"})
    assert result.handled == 4
    (letter,) = result.dead_letters
    assert letter.seq == 5
    assert letter.dead_letter is not None
    assert (letter.dead_letter.reason, letter.dead_letter.attempts) == ("handler_error", 2)
    assert "exited" in (letter.dead_letter.error or "")
    assert result.stats["received"] == result.handled + result.stats["dead_lettered"]


async def test_webhook_sends_a_batch_as_one_json_array() -> None:
    server = HttpServer()
    async with server.running():
        handler = build_handler("webhook", {"url": server.url, "array": True})
        async with run_handler(handler):
            result = await deliver(handler, ticks(5), BATCH)
    assert result.handled == 5
    (request,) = server.requests
    assert [record["body"]["n"] for record in json.loads(request.body)] == [1, 2, 3, 4, 5]


async def test_webhook_without_array_reports_each_failed_request_alone() -> None:
    server = HttpServer()
    server.script.extend([(200, {}), (400, {}), (200, {})])
    async with server.running():
        handler = build_handler(
            "webhook", {"url": server.url, "payload": "body", "request_retries": 0}
        )
        async with run_handler(handler):
            result = await deliver(handler, ticks(3), {**BATCH, "retries": 0})
    assert result.handled == 2
    assert [m.seq for m in result.dead_letters] == [2]
    assert [json.loads(r.body)["n"] for r in server.requests] == [1, 2, 3]
