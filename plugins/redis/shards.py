"""Stream names of the ``redis`` sink: shards and Redis Cluster hash tags.

``shards = N`` spreads a sink's entries over N streams named by a template
(``stream = "{ticks.%d}:in"``): a frame goes to shard ``crc32(key JSON) % N``
(:func:`shard_of`), so the frames of one key stay in order in one stream.

Invariants: :func:`shard_of` depends only on the entry's ``key`` text and N,
the same in every process and version (every ingest daemon, and any other
producer, puts one key's frames into the same stream); the ``%d`` of a template
sits inside its hash tag, so the shards spread over Cluster slots while the keys
derived from one shard (its dedupe keys) share its slot.
"""

from __future__ import annotations

import zlib

__all__ = ["SHARD", "hash_tag", "shard_of", "shard_stream"]

# The placeholder of a sharded stream name: "{ticks.%d}:in" -> "{ticks.0}:in", ...
SHARD = "%d"


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes when it has one: the text in its first ``{...}``."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:  # no closing brace, or "{}": Cluster hashes the whole key
        return None
    return key[start + 1 : end]


def shard_stream(template: str, shard: int) -> str:
    """The name of shard ``shard`` of a sharded stream: ``%d`` replaced by the number."""
    return template.replace(SHARD, str(shard))


def shard_of(key_json: str | bytes, shards: int) -> int:
    """The shard of a route key: CRC-32 of its JSON text (the entry's ``key``) modulo ``shards``.

    ``key_json`` as text or as its UTF-8 bytes. Stable across processes and
    versions, so every ingest daemon (and any other producer) puts one key's
    frames into the same stream.
    """
    if shards <= 1:
        return 0
    data = key_json.encode() if isinstance(key_json, str) else key_json
    return zlib.crc32(data) % shards
