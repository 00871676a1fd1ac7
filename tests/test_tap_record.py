"""A tap's record is the jsonl record plus ``handlers``, byte for byte, on every path.

The tap encodes the common record (a body validated as JSON, no dead letter)
from a struct instead of :func:`wsroute.records.record`'s dict, for speed; any
other goes through ``record()``. Both must give exactly what ``record()`` and
``"handlers"`` give, whatever the codec, the body and the message, with the
daemon's own codecs and the handler runners of a real (offline) service.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import anyio
import msgspec
import pytest

from wsroute import DeadLetter
from wsroute.api.tap import _Entry, text_frame
from wsroute.codec import BytesCodec, JsonCodec, TextCodec
from wsroute.config import loads
from wsroute.plugin import Frame, Message
from wsroute.records import record
from wsroute.service import Service, plan
from wsroute.struct_codec import StructCodec

CONFIG = """
[daemon]
log_level = "warning"
[connections.up]
url = "ws://127.0.0.1:1/"
[routes.all]
handlers = ["archive", "audit"]
[handlers.archive]
plugin = "log"
[handlers.audit]
plugin = "log"
"""

_encoder = msgspec.json.Encoder(enc_hook=str)


def messages() -> list[Message]:
    structs = StructCodec(
        StructCodec.Options(header="<i", fields=["opcode"], body="json", key="opcode")
    )
    body = json.dumps({"type": "tick", "price": 43210.5, "tags": ["a", "é"], "n": None})
    found = [
        structs.decode(Frame("up", struct.pack("<i", 1) + body.encode(), 7, 1733400000.25)),
        JsonCodec().decode(Frame("up", body, 8, 1733400000.5)),
        JsonCodec().decode(Frame("up", '{"type": "multi",\n "line": true}', 9, 1.0)),
        TextCodec().decode(Frame("up", "plain text ✓", 10, 2.0)),
        BytesCodec().decode(Frame("up", b"\x00\x01\xff", 11, 3.0)),
        JsonCodec(JsonCodec.Options(key="data.channel")).decode(
            Frame("up", '{"data": {"channel": 5}}', 12, 4.0)
        ),
    ]
    letter = found[0].replace(dead_letter=DeadLetter("handler_error", "archive", "boom", 3))
    return [*found, letter]


@pytest.mark.parametrize("index", range(len(messages())))
def test_the_tap_record_is_the_jsonl_record_plus_handlers(index: int) -> None:
    message = messages()[index]

    async def main() -> tuple[bytes, bytes]:
        service = Service(plan(loads(CONFIG)), connect=False)
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            targets = tuple(service.runners[n] for n in ("archive", "audit"))
            ours = _Entry(message, targets).frame()
            out: dict[str, Any] = record(message, verbatim=True)
            out["handlers"] = ["archive", "audit"]
            service.shutdown()
        return ours, text_frame(_encoder.encode(out))

    ours, theirs = anyio.run(main)
    assert ours == theirs


def test_both_paths_are_taken() -> None:
    kinds = [
        m.body_json is not None and m.dead_letter is None and "\n" not in str(m.body_json)
        for m in messages()
    ]
    assert kinds.count(True) >= 2  # the struct path: struct and json codecs
    assert kinds.count(False) >= 4  # record(): multi-line, text, bytes, a dead letter
