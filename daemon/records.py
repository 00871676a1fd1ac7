"""The record format: one message as one JSON object (a line of a ``jsonl`` file).

Public, for plugins and tools: the ``jsonl`` handler writes these lines, the
dead-letter file is made of them, ``wsroute replay`` reads them back, and
sinks that ship a message as JSON (exec, webhook, redis, nats) send the same
object. Fields: ``connection``, ``key``, ``seq``, ``received_at``, ``fields``,
``body`` (decoded JSON as JSON, text as a string, bytes as base64 with
``"body_encoding": "base64"``); a dead letter adds ``reason``, ``handler``,
``error`` and ``attempts`` (:data:`DEAD_LETTER_FIELDS`), and a
``decode_error`` record's body is the undecodable frame byte for byte.

A message whose body the codec validated as JSON (``message.body_json``) has
that JSON text copied into the record verbatim, without building the body and
encoding it again (unless it spans lines). A message whose body cannot be
built (a codec with ``validate = false`` and an invalid frame) is written with
``"frame": true`` and the raw frame as its body, so that replay decodes it
again.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from .exceptions import DecodeError
from .plugin import DeadLetter, Message

__all__ = ["DEAD_LETTER_FIELDS", "encode_record", "parse_record", "record"]

#: The fields a dead-lettered message's record adds.
DEAD_LETTER_FIELDS = ("reason", "handler", "error", "attempts")


def _fallback(value: Any) -> Any:
    # An archive must not refuse a message over a type JSON lacks: write its text.
    return str(value)


_encoder = msgspec.json.Encoder(enc_hook=_fallback)


def record(message: Message, *, verbatim: bool = False) -> dict[str, Any]:
    """The JSON object written for ``message``: the jsonl file format, as a dict.

    ``body`` is the decoded value; a ``bytes`` body is base64 text with
    ``"body_encoding": "base64"``. A dead-lettered message adds ``reason``,
    ``handler``, ``error`` and ``attempts``. A body that cannot be built is
    the raw frame, with ``"frame": true``.

    ``verbatim``: a body validated as JSON (``message.body_json``) is given as
    a ``msgspec.Raw`` of its text, which a msgspec encoder writes as it is,
    without building the body (:func:`encode_record` does this).
    """
    out: dict[str, Any] = {
        "connection": message.connection,
        "key": message.key,
        "seq": message.seq,
        "received_at": message.received_at,
        "fields": message.fields,
    }
    text = message.body_json
    if verbatim and text is not None and not _spans_lines(text):
        out["body"] = msgspec.Raw(text)
    else:
        try:
            body = message.body
        except DecodeError:
            body = message.raw
            out["frame"] = True
        out["body"] = body
        if isinstance(body, bytes | bytearray | memoryview):
            out["body"] = base64.b64encode(body).decode("ascii")
            out["body_encoding"] = "base64"
    dead = message.dead_letter
    if dead is not None:
        out["reason"] = dead.reason
        out["handler"] = dead.handler
        out["error"] = dead.error
        out["attempts"] = dead.attempts
    return out


def _spans_lines(text: bytes | str) -> bool:
    # Valid JSON holds line breaks only as whitespace between tokens; a line of
    # a jsonl file must not.
    if isinstance(text, str):
        return "\n" in text or "\r" in text
    return b"\n" in text or b"\r" in text


def encode_record(message: Message) -> bytes:
    """One complete line (newline included) for ``message``."""
    return _encoder.encode(record(message, verbatim=True)) + b"\n"


class _Record(msgspec.Struct):
    connection: str
    key: str | int | float | bool | None = None
    seq: int = 0
    received_at: float = 0.0
    fields: dict[str, Any] = {}
    body: Any = None
    body_encoding: str | None = None
    reason: str | None = None
    handler: str | None = None
    error: str | None = None
    attempts: int = 0
    frame: bool = False


_decoder = msgspec.json.Decoder(_Record)


def parse_record(line: bytes | bytearray | memoryview | str) -> Message:
    """Rebuild the :class:`~wsroute.Message` a jsonl line was written from (for replay).

    The raw frame is not part of the record, so ``raw`` is empty — except in
    a ``decode_error`` record, whose body is the undecodable frame byte for byte
    (text, or base64 for a binary frame): ``raw`` is then that frame again, for
    ``wsroute replay`` to decode. Raises ``ValueError`` naming the problem for a
    line that is not such a record (a torn line left by a crash, for one).
    A record with ``"frame": true`` (a body that could not be built) also gives
    its frame back as ``raw``.
    """
    try:
        rec = _decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise ValueError(f"not a wsroute record: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a JSON line: {exc}") from exc
    except RecursionError:
        raise ValueError("nested too deeply to be a record (its parser ran out of stack)") from None
    body = rec.body
    if rec.body_encoding == "base64":
        if not isinstance(body, str):
            raise ValueError("body_encoding is base64 but body is not a string")
        try:
            body = base64.b64decode(body, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"body is not valid base64: {exc}") from exc
    elif rec.body_encoding is not None:
        raise ValueError(f"unknown body_encoding {rec.body_encoding!r}")
    dead = None
    raw: bytes | str = b""
    if rec.reason is not None:
        dead = DeadLetter(
            reason=rec.reason, handler=rec.handler, error=rec.error, attempts=rec.attempts
        )
        if rec.reason == "decode_error" and isinstance(body, bytes | str):
            raw = body
    if rec.frame and isinstance(body, bytes | str):
        raw = body
    return Message(
        rec.connection,
        rec.key,
        body,
        fields=rec.fields,
        raw=raw,
        seq=rec.seq,
        received_at=rec.received_at,
        dead_letter=dead,
    )
