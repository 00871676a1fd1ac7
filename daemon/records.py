"""The record format: one message as one JSON object (a line of a ``jsonl`` file).

Public, for plugins and tools: the ``jsonl`` handler writes these lines, the
dead-letter file is made of them, ``wsroute replay`` reads them back, and
sinks that ship a message as JSON (exec, webhook, redis, nats) send the same
object. Fields: ``connection``, ``key``, ``seq``, ``received_at``, ``fields``,
``body`` (decoded JSON as JSON, text as a string, bytes as base64 with
``"body_encoding": "base64"``); a dead letter adds ``reason``, ``handler``,
``error`` and ``attempts`` (:data:`DEAD_LETTER_FIELDS`), and a
``decode_error`` record's body is the undecodable frame byte for byte.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from .plugin import DeadLetter, Message

__all__ = ["DEAD_LETTER_FIELDS", "encode_record", "parse_record", "record"]

#: The fields a dead-lettered message's record adds.
DEAD_LETTER_FIELDS = ("reason", "handler", "error", "attempts")


def _fallback(value: Any) -> Any:
    # An archive must not refuse a message over a type JSON lacks: write its text.
    return str(value)


_encoder = msgspec.json.Encoder(enc_hook=_fallback)


def record(message: Message) -> dict[str, Any]:
    """The JSON object written for ``message``: the jsonl file format, as a dict.

    ``body`` is the decoded value; a ``bytes`` body is base64 text with
    ``"body_encoding": "base64"``. A dead-lettered message adds ``reason``,
    ``handler``, ``error`` and ``attempts``.
    """
    out: dict[str, Any] = {
        "connection": message.connection,
        "key": message.key,
        "seq": message.seq,
        "received_at": message.received_at,
        "fields": message.fields,
        "body": message.body,
    }
    body = message.body
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


def encode_record(message: Message) -> bytes:
    """One complete line (newline included) for ``message``."""
    return _encoder.encode(record(message)) + b"\n"


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


_decoder = msgspec.json.Decoder(_Record)


def parse_record(line: bytes | str) -> Message:
    """Rebuild the :class:`~wsroute.Message` a jsonl line was written from (for replay).

    The raw frame is not part of the record, so ``raw`` is empty — except in
    a ``decode_error`` record, whose body is the undecodable frame byte for byte
    (text, or base64 for a binary frame): ``raw`` is then that frame again, for
    ``wsroute replay`` to decode. Raises ``ValueError`` naming the problem for a
    line that is not such a record (a torn line left by a crash, for one).
    """
    try:
        rec = _decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise ValueError(f"not a wsroute record: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a JSON line: {exc}") from exc
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
