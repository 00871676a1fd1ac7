"""The ``jetstream`` source: worker daemons pulling from a NATS JetStream stream.

Modules, one concept each:

- :mod:`.source`: :class:`~.source.JetStreamSource` (``type = "jetstream"``):
  the worker's state — every message it holds is in flight, dead-lettering or
  waiting for its ack — pulls, acks, in-progress renewals, release at a stop;
- :mod:`.options`: its options, checked when the config loads;
- :mod:`.consumer`: the client, the stream and the durable pull consumer, each
  step retried through outages and leader elections;
- :mod:`.entry`: a JetStream message as a stream entry, decoded like a Redis one;
- :mod:`.connection`: the server options and connecting to a cluster, shared
  with the ``nats`` sink.

The package imports nothing itself; the entry point names :mod:`.source`.
"""
