"""What the built-in codecs share: JSON parsing and its errors, route keys at dotted
paths, and the outgoing frame (:func:`encode_outgoing`). Pure: no I/O."""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from .exceptions import DecodeError, EncodeError
from .plugin import Key, Outgoing

__all__ = [
    "DOTTED_PATH",
    "JSON_ERRORS",
    "LAZY_FROM",
    "SCALARS",
    "VALIDATE_DOC",
    "check_utf8",
    "dotted_path",
    "encode_outgoing",
    "json_check",
    "json_decode",
    "json_error",
    "lookup_key",
]

# Bound methods looked up once: each frame saves two attribute lookups.
json_decode = msgspec.json.Decoder().decode
json_encode = msgspec.json.Encoder().encode
# Parses (and so checks the syntax of) a JSON value without building it.
json_check = msgspec.json.Decoder(msgspec.Raw).decode

#: Frames (or struct bodies) of this many bytes or more get a lazy body.
LAZY_FROM = 1024

VALIDATE_DOC = (
    "Check a JSON body when the frame is decoded (an invalid one is a decode_error). "
    "false, for a trusted upstream: a large body is not checked until a handler reads it, "
    "and a body that fails then fails that handler (retries, then a handler_error "
    "dead letter with the raw frame)."
)

# What msgspec.json.decode raises on bad input: DecodeError (malformed, truncated,
# number out of range), UnicodeDecodeError (bad UTF-8 inside a string),
# UnicodeEncodeError (a str with a lone surrogate), RecursionError (deep nesting).
JSON_ERRORS = (msgspec.DecodeError, UnicodeError, RecursionError)

# A route key must be one of these (bool is an int); anything else found there is None.
SCALARS = (str, int, float)


#: What :func:`dotted_path` accepts, for the JSON Schema of the codecs' options.
DOTTED_PATH = r"^[^.]+(\.[^.]+)*$"


def dotted_path(path: str) -> tuple[str, ...]:
    """Split a dotted key path (``"data.channel"`` → ``("data", "channel")``) once, up front.

    Call it when building a codec, and pass the result to :func:`lookup_key` per
    message. ``ValueError`` for an empty path or an empty part (``"a..b"``).
    """
    parts = tuple(path.split("."))
    if not path or "" in parts:
        raise ValueError(f'invalid dotted path "{path}": it needs names separated by single dots')
    return parts


def lookup_key(obj: Any, parts: tuple[str, ...]) -> Key:
    """The route key found at ``parts`` (from :func:`dotted_path`) in a decoded JSON value.

    A str, int, float or bool found there is the key. A missing path, a value
    that is not an object on the way, or a non-scalar value at the end gives
    ``None`` (no key), never an error: frames without a key are still routable
    by routes that name no key.
    """
    for part in parts:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj if isinstance(obj, SCALARS) else None


def json_problem(exc: BaseException) -> str:
    """A short reason from a JSON decoder error; never the input itself."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeEncodeError):
        return "text contains a lone surrogate"
    text = str(exc).removeprefix("JSON is malformed: ")
    # msgspec < 0.23 raised UnicodeDecodeError here; 0.23 a DecodeError of its own words.
    if isinstance(exc, UnicodeDecodeError) or "utf-8" in text.lower():
        return "invalid UTF-8 in a string"
    return text[:1].lower() + text[1:120]


def json_error(exc: BaseException, what: str = "invalid JSON") -> DecodeError:
    return DecodeError(f"{what}: {json_problem(exc)}")


def check_utf8(data: bytes | str, what: str) -> None:
    """msgspec skips strings it does not build without checking their UTF-8: check it."""
    if type(data) is bytes and not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{what}: invalid UTF-8 in a string") from exc


def encode_outgoing(outgoing: Outgoing) -> bytes | str:
    """Build the frame for ``outgoing``, the way every built-in codec does.

    ``json`` alone → a text frame of compact JSON; ``struct`` (with or without
    ``json``) → a binary frame, ``struct.pack(format, *values)`` followed by the
    JSON body; ``text`` → a text frame; ``raw`` → a binary frame.
    :class:`~wsroute.EncodeError` for an invalid combination or a value that
    cannot be encoded.
    """
    # Outgoing.build sets has_json; a hand-built Outgoing(json=...) counts too.
    has_json = outgoing.has_json or outgoing.json is not None
    kinds = (has_json or outgoing.struct is not None) + (outgoing.text is not None)
    if kinds + (outgoing.raw is not None) != 1:
        raise EncodeError("give exactly one of json, struct (optionally with json), text or raw")
    if outgoing.text is not None:
        return outgoing.text
    if outgoing.raw is not None:
        return bytes(outgoing.raw)
    head = b""
    if outgoing.struct is not None:
        fmt, values = outgoing.struct
        try:
            head = struct.pack(fmt, *values)
        except (struct.error, TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot pack struct {fmt!r}: {exc}") from exc
        if not has_json:
            return head
    try:
        body = json_encode(outgoing.json)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise EncodeError(f"cannot encode JSON: {exc}") from exc
    if outgoing.struct is not None:
        return head + body
    return body.decode()
