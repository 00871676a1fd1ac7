"""HA pairs: the ``redis`` sink's ``dedupe``, so that two ingest daemons store one copy.

Two ingest daemons on the same upstream write one copy of each frame.
``"seq"`` gives each entry the ID ``0-<the upstream's sequence number>``
(:func:`upstream_seq`) and Redis refuses an ID that is not above the stream's
top; ``"hash"`` stores a key per frame content (:func:`dedupe_key`) for
``dedupe_window`` and writes the entry only when that key was new. Both run as
one Lua script per entry (:data:`SCRIPTS`), so Redis alone decides which
daemon's copy is stored.

Invariants: the content hash covers only what both daemons see alike
(``connection``, ``kind``, ``frame``), never ``seq`` or ``received_at``; a
dedupe key lives in its stream's Cluster slot; a failed ``XADD`` releases the
key, so that a retry is not taken for a duplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from wsroute import Message, WsrouteError

from .shards import hash_tag

__all__ = ["SCRIPTS", "DedupeError", "content_digest", "dedupe_key", "upstream_seq"]


class DedupeError(WsrouteError, RuntimeError):
    """``dedupe = "seq"`` cannot store a frame in order: it came after a higher sequence number."""


def dedupe_key(stream: str, fields: Mapping[str, str | bytes]) -> str:
    """The key ``dedupe = "hash"`` sets for an entry: its content hash, in the stream's slot.

    The hash covers what both daemons of a pair see alike — the connection's
    name, the frame kind and the frame — and not ``seq`` or ``received_at``,
    which differ between them. The key carries the stream's Cluster hash tag
    (or the stream's name as one), so the script's two keys share a slot.
    """
    prefix = stream if hash_tag(stream) is not None else "{" + stream + "}"
    return f"{prefix}:dedupe:{content_digest(fields)}"


def content_digest(fields: Mapping[str, str | bytes]) -> str:
    """The hex content hash of an entry's ``connection``, ``kind`` and ``frame``.

    What both daemons of an HA pair see alike; shared with the ``nats`` sink's
    ``dedupe = "hash"``, which makes a ``Nats-Msg-Id`` of it.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name in ("connection", "kind", "frame"):
        value = fields.get(name, b"")
        digest.update(value.encode() if isinstance(value, str) else value)
        digest.update(b"\0")
    return digest.hexdigest()


def upstream_seq(message: Message, name: str) -> int:
    """The upstream's sequence number of ``message`` for ``dedupe = "seq"``.

    ``name`` is a header field the codec extracted (``message.fields``), or else
    a dotted path into a JSON body (``"n"``, ``"meta.seq"``). It must be a
    positive integer (or its decimal text); ``ValueError`` otherwise.
    """
    value: Any
    if name in message.fields:
        value = message.fields[name]
    else:
        value = message.body
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ValueError(f"dedupe_field {name!r}: the message has no such field")
            value = value[part]
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"dedupe_field {name!r} must be a positive integer, got {value!r}")
    return value


# dedupe = "seq": XADD with the explicit ID ARGV[1]. {1, id}: stored; {0}: that very
# ID is in the stream (a duplicate); {2, top}: refused because the stream's top is
# higher and this ID is not there (late, or a stream with foreign IDs).
SEQ_SCRIPT = """
local args = {'XADD', KEYS[1]}
if ARGV[2] ~= '' then
  args[#args + 1] = ARGV[2]; args[#args + 1] = '~'; args[#args + 1] = ARGV[3]
end
args[#args + 1] = ARGV[1]
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.pcall(unpack(args))
if type(id) == 'table' and id.err then
  if not string.find(id.err, 'equal or smaller', 1, true) then return id end
  if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) > 0 then return {0} end
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #top > 0 then return {2, top[1][1]} end
  return {2, ''}
end
return {1, id}
"""

# dedupe = "hash": SET NX PX of the content key KEYS[1], and XADD to KEYS[2] only if
# the key was new. {1, id}: stored; {0}: the key existed (a duplicate). A failed
# XADD releases the key, so that a retry is not taken for a duplicate.
HASH_SCRIPT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return {0} end
local args = {'XADD', KEYS[2]}
if ARGV[2] ~= '' then
  args[#args + 1] = ARGV[2]; args[#args + 1] = '~'; args[#args + 1] = ARGV[3]
end
args[#args + 1] = '*'
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.pcall(unpack(args))
if type(id) == 'table' and id.err then
  redis.call('DEL', KEYS[1])
  return id
end
return {1, id}
"""

SCRIPTS = {"seq": SEQ_SCRIPT, "hash": HASH_SCRIPT}
