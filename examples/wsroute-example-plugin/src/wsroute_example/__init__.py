"""An example third-party wsroute plugin package.

- ``moving_average`` (handler, :class:`wsroute_example.handlers.MovingAverage`):
  the mean of a numeric field over the last N messages of each route key,
  emitted as a derived message or logged.
- ``msgpack`` (codec, :class:`wsroute_example.codecs.MsgpackCodec`): binary
  frames holding one MessagePack value each.

wsroute finds both through the entry points in ``pyproject.toml``; nothing here
imports anything of wsroute but its public API (``from wsroute import ...``).
"""

__version__ = "0.1.0"
