"""Fuzz target: every built-in codec gets arbitrary frames and may only raise DecodeError.

Run with atheris (a libFuzzer front end for Python); see README.md in this folder.
The file name does not match pytest's ``test_*.py``, so the test suite never
collects it. Any other exception, or a JSON body that does not survive
encode → decode unchanged, is reported by atheris as a crash with the input
that caused it.
"""

from __future__ import annotations

import sys
from typing import Any

import atheris  # type: ignore[import-not-found, import-untyped, unused-ignore]

with atheris.instrument_imports():
    from wsroute import DecodeError, Frame, Message, Outgoing
    from wsroute.codec import BytesCodec, JsonCodec, StructCodec, TextCodec, encode_outgoing

CODECS: list[Any] = [
    JsonCodec(),
    JsonCodec(JsonCodec.Options(key="data.channel")),
    StructCodec(StructCodec.Options(header="<i", fields=["opcode"])),
    StructCodec(StructCodec.Options(header="<i", fields=["opcode"], text="text")),
    StructCodec(StructCodec.Options(header="<ib", body="text", text_key="a.b.c")),
    StructCodec(StructCodec.Options(header=">Hd", body="bytes")),
    StructCodec(StructCodec.Options(header="<4sb", fields=["sym", "n"], key="sym")),
    StructCodec(StructCodec.Options(header="?e", body="text", key="f1")),
    StructCodec(StructCodec.Options(header="4x")),
    TextCodec(),
    BytesCodec(),
]


def check(codec: Any, data: bytes | str) -> None:
    """Decode ``data``; anything but a Message or a short DecodeError is a finding."""
    try:
        message = codec.decode(Frame("fuzz", data, 1, 0.0))
    except DecodeError as exc:
        if not 0 < len(str(exc)) < 200:
            raise AssertionError(f"bad DecodeError text of {len(str(exc))} chars") from exc
        return
    if not isinstance(message, Message) or message.raw is not data:
        raise AssertionError(f"{type(codec).__name__} returned {message!r}")
    if message.key is not None and not isinstance(message.key, str | int | float):
        raise AssertionError(f"{type(codec).__name__} produced key {message.key!r}")
    if isinstance(codec, JsonCodec):
        # What decoded as JSON must encode again and decode to the same value.
        again = encode_outgoing(Outgoing.build(json=message.body, has_json=True))
        if codec.decode(Frame("fuzz", again, 2, 0.0)).body != message.body:
            raise AssertionError(f"JSON round trip changed {message.body!r}")


def test_one_input(raw: bytes) -> None:
    provider = atheris.FuzzedDataProvider(raw)
    # The same input as bytes, as bytes after a valid opcode header (reaches the
    # body branches), and as text: both the raw bytes read as UTF-8 and arbitrary
    # code points (lone surrogates included).
    text = provider.ConsumeUnicode(len(raw))
    for codec in CODECS:
        check(codec, raw)
        check(codec, b"\x02\x00\x00\x00" + raw)
        check(codec, raw.decode("utf-8", "replace"))
        check(codec, text)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
