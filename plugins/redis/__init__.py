"""The Redis plugins: the ``redis`` sink and the ``redis-stream`` source.

Modules, one concept each:

- :mod:`.entry`: the stream-entry format, encoded by the sink and decoded by the
  source (one frame, a ``jsonl`` record, or a pack of frames per entry);
- :mod:`.sink`: :class:`~.sink.RedisHandler` (``plugin = "redis"``): ``XADD``
  to a stream or ``PUBLISH`` to a channel;
- :mod:`.batcher`: many concurrent ``handle()`` calls, one pipelined round trip;
- :mod:`.roundtrip`: many commands in one round trip on connections of its own,
  packed and parsed by hiredis (all the sink's commands, the source's ``XACK``);
- :mod:`.shards`: shard streams and Redis Cluster hash tags;
- :mod:`.dedupe`: HA pairs of ingest daemons storing one copy of each frame;
- :mod:`.source`: :class:`~.source.RedisStreamSource`
  (``type = "redis-stream"``): a consumer of a consumer group — start, read, stop;
- :mod:`.source_options`: the source's options and counters;
- :mod:`.ledger`: the entry IDs a worker holds, by state; the in-flight cap; batched ``XACK``;
- :mod:`.delivery`: entries read → messages routed (one ``deliver_many`` per read) or
  dead-lettered (undecodable, ``max_deliveries``);
- :mod:`.group`: the source's Redis commands, retried through outages, with the
  group recreated when it vanished;
- :mod:`.reclaim`: taking over idle entries of dead workers, and the lease that
  keeps a slow handler's entries from being taken.

The package imports nothing itself, so :mod:`.entry` is usable without the
``redis`` client library; the entry points name :mod:`.sink` and :mod:`.source`.
"""
