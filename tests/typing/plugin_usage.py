"""Type-checked (mypy --strict), never run: the plugin API as a plugin author uses it.

If a change to the public API breaks this file, it breaks third-party plugins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wsroute import (
    Codec,
    DecodeError,
    Duration,
    Frame,
    HandlerContext,
    Message,
    Outgoing,
    SendError,
)
from wsroute.codec import encode_outgoing


class Printer:
    """Print each message on one line."""

    @dataclass
    class Options:
        prefix: str = field(default="", metadata={"doc": "Printed before each message."})
        pause: Duration = Duration(0.0)

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self.ctx = ctx

    async def start(self) -> None:
        self.ctx.log.info("printer_started", prefix=self.options.prefix)

    async def handle(self, message: Message) -> None:
        print(self.options.prefix, message.connection, message.key, message.seq, message.body)
        if message.key == "ping":
            try:
                await self.ctx.send(message.connection, json={"type": "pong"})
                await self.ctx.send(message.connection, struct=("<i", [2]), json=["first"])
            except SendError:
                self.ctx.log.warning("reply_failed")
        await self.ctx.subscribe(message.connection, "ticks", struct=("<i", [2]), json=["t"])
        await self.ctx.unsubscribe(message.connection, "ticks")
        await self.ctx.emit(message.replace(key="derived"))

    async def stop(self) -> None:
        pass


class Blocking:
    """A synchronous handler: the daemon runs it in a thread."""

    def __init__(self, options: None, ctx: HandlerContext) -> None:
        self.name = ctx.name

    def handle(self, message: Message) -> None:
        if message.dead_letter is not None:
            print(message.dead_letter.reason, message.dead_letter.handler)


class Upper:
    """A codec: text frames upper-cased, key = first word."""

    @dataclass
    class Options:
        sep: str = " "

    def __init__(self, options: Options) -> None:
        self.sep = options.sep

    def decode(self, frame: Frame) -> Message:
        if not isinstance(frame.data, str):
            raise DecodeError("binary frames are not supported")
        text = frame.data.upper()
        return Message(
            frame.connection,
            text.split(self.sep, 1)[0],
            text,
            raw=frame.data,
            seq=frame.seq,
            received_at=frame.received_at,
        )

    def encode(self, outgoing: Outgoing) -> bytes | str:
        return encode_outgoing(outgoing)


codec: Codec = Upper(Upper.Options())


async def kit_is_typed_by_the_plugin_class() -> None:
    # build_handler(Class) is an instance of Class (a name gives Any: the class is not known).
    from typing import assert_type

    from wsroute.testing import Recorder, RecordingContext, build_codec, build_handler, run_handler

    printer = build_handler(Printer, {"prefix": ">"}, ctx=RecordingContext("p"))
    assert_type(printer, Printer)
    async with run_handler(printer) as running:
        assert_type(running, Printer)
    assert_type(build_codec(Upper), Upper)
    recorder = build_handler(Recorder)
    assert_type(recorder.messages, list[Message])
