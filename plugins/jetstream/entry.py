"""A JetStream message as a stream entry: the same format, and decode path, as Redis's.

The ``nats`` sink with ``payload = "frame"`` publishes the raw frame as the
payload and the other fields of a stream entry as headers (``connection``,
``key``, ``seq``, ``received_at``, ``kind``; a dead letter adds ``reason``,
``handler``, ``error``, ``attempts``). :func:`entry_fields` turns a message
back into those fields, so that :func:`wsroute.plugins.redis.entry.decode_message`
— the Redis source's decode path — rebuilds the :class:`~wsroute.Message`:
through the source's codec, or from the ``jsonl`` record of a ``kind =
"message"`` entry. With ``payload = "record"`` the payload is such a record.

Invariants:

- the entry's ID is the message's stream sequence, in decimal: handlers see it
  as ``fields["stream_id"]``, as they see a Redis entry ID;
- a producer that sent no ``received_at`` gets the time JetStream stored the
  message; no ``seq``, 0;
- NATS's own headers (``Nats-Msg-Id``, ``Nats-Expected-...``) never become
  entry fields.

Pure functions only: no client, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from wsroute import Frame, Message
from wsroute.plugins.redis.entry import KIND_MESSAGE, decode_message, undecodable_message

__all__ = ["entry_fields", "jetstream_message", "undecodable"]


def entry_fields(
    data: bytes, headers: Mapping[str, str] | None, stored_at: float, payload: str
) -> dict[bytes, bytes]:
    """The stream-entry fields of one JetStream message (``payload``: ``frame`` or ``record``)."""
    fields: dict[bytes, bytes] = {}
    if payload == "record":
        fields[b"kind"] = KIND_MESSAGE.encode()
    elif headers:
        for name, value in headers.items():
            if not name.startswith("Nats-"):
                fields[name.encode()] = value.encode()
    fields[b"frame"] = data
    fields.setdefault(b"received_at", repr(stored_at).encode())
    return fields


def jetstream_message(
    name: str,
    stream_seq: int,
    fields: Mapping[bytes, bytes],
    decode: Callable[[Frame], Message],
) -> Message:
    """The :class:`~wsroute.Message` of an entry; ``ValueError`` or ``DecodeError``."""
    return decode_message(name, str(stream_seq), fields, decode)


def undecodable(name: str, stream_seq: int, fields: Mapping[bytes, bytes]) -> Message:
    """An unreadable entry as a dead letter: body and ``raw`` are the payload as stored."""
    return undecodable_message(name, str(stream_seq), fields)
