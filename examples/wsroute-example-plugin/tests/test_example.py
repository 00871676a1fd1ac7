"""Tests of the example plugins, written the way a plugin author would: wsroute.testing.

Unit tests feed frames and messages without a network; the last test runs the
daemon with a real upstream through the ``wsroute_daemon`` fixture, which
wsroute installs as a pytest plugin.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec
import pytest

from wsroute import ConfigError, DecodeError, Outgoing
from wsroute.testing import (
    RecordingContext,
    ScriptedUpstream,
    build_codec,
    build_handler,
    decode,
    decode_all,
    message,
)

pack = msgspec.msgpack.encode


# --------------------------------------------------------------------------- the codec


def test_decodes_a_map_and_its_route_key() -> None:
    msg = decode("msgpack", pack({"type": "tick", "price": 1.5}), connection="feed", seq=3)
    assert (msg.connection, msg.key, msg.body, msg.seq) == (
        "feed",
        "tick",
        {"type": "tick", "price": 1.5},
        3,
    )


def test_route_key_at_a_dotted_path() -> None:
    frame = pack({"data": {"channel": 7}})
    assert decode("msgpack", frame, options={"key": "data.channel"}).key == 7
    assert decode("msgpack", pack([1, 2])).key is None


def test_frames_it_cannot_read_are_decode_errors() -> None:
    with pytest.raises(DecodeError, match="text frame"):
        decode("msgpack", '{"type": "tick"}')
    with pytest.raises(DecodeError, match="invalid MessagePack"):
        decode("msgpack", b"\xc1")


def test_encodes_json_values_as_messagepack() -> None:
    codec = build_codec("msgpack")
    assert codec.encode(Outgoing.build(json={"op": "sub"})) == pack({"op": "sub"})
    framed = codec.encode(Outgoing.build(struct=("<i", [2]), json=["first"]))
    assert framed == struct.pack("<i", 2) + pack(["first"])
    assert codec.encode(Outgoing.build(text="hi")) == "hi"


def test_codec_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="dotted path"):
        build_codec("msgpack", {"key": "a..b"})


# --------------------------------------------------------------------------- the handler


@pytest.mark.anyio
async def test_emits_the_moving_average_per_key() -> None:
    ctx = RecordingContext("avg")
    handler = build_handler("moving_average", {"window": 2, "every": 1}, ctx=ctx)
    frames = [pack({"type": "tick", "price": p}) for p in (1.0, 3.0, 5.0)]
    for msg in decode_all("msgpack", frames):
        await handler.handle(msg)
    assert [m.body["average"] for m in ctx.emitted] == [1.0, 2.0, 4.0]
    assert {m.key for m in ctx.emitted} == {"average"}


@pytest.mark.anyio
async def test_skips_what_it_cannot_average() -> None:
    ctx = RecordingContext("avg")
    handler = build_handler("moving_average", {}, ctx=ctx)
    await handler.handle(message({"price": "high"}, key="tick"))
    await handler.handle(message("not a map", key="tick"))
    await handler.handle(message({"of": "tick", "average": 1.0}, key="average"))  # its own
    assert ctx.emitted == []


def test_handler_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"handlers\.test\.window: must be at least 1"):
        build_handler("moving_average", {"window": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        build_handler("moving_average", {"windw": 3})


# --------------------------------------------------------------------------- end to end

CONFIG = """
[connections.feed]
url = "${WSROUTE_UPSTREAM}"
codec = "feed"
ping_interval = 0

[[connections.feed.on_connect]]
json = { op = "subscribe", channel = "ticks" }

[codecs.feed]
type = "msgpack"

[routes.ticks]
key = "tick"
handlers = ["avg"]

[routes.averages]
key = "average"
handlers = ["seen"]

[handlers.avg]
plugin = "moving_average"
window = 2
every = 2

[handlers.seen]
plugin = "wsroute.testing:Recorder"
"""


@pytest.mark.anyio
async def test_end_to_end(wsroute_daemon: Any) -> None:
    ticks = [pack({"type": "tick", "price": p}) for p in (10.0, 20.0, 30.0, 50.0)]
    upstream = ScriptedUpstream(frames=ticks)
    async with wsroute_daemon(CONFIG, upstream=upstream) as daemon:
        seen = daemon.handler("seen")
        await daemon.wait_until(lambda: len(seen.messages) == 2)
    assert [m.body["average"] for m in seen.messages] == [15.0, 40.0]
    # The subscribe step went out through the codec: MessagePack, not JSON.
    (subscribe,) = upstream.received
    assert isinstance(subscribe, bytes)
    assert msgspec.msgpack.decode(subscribe) == {"op": "subscribe", "channel": "ticks"}
