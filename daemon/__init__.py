"""wsroute: a pluggable message-routing daemon for long-lived WebSocket upstreams.

Two public faces, both documented; everything else is internal and may change
between releases:

- **Plugins** (docs/plugins.md): handler, codec and source plugins import the
  plugin API from this package (``Message``, ``HandlerContext``, ``Codec``,
  ``OptionError``, ...) and use the public modules ``wsroute.records``,
  ``wsroute.tls``, ``wsroute.net``, ``wsroute.outage``, ``wsroute.process``,
  the built-in sinks' helpers ``wsroute.plugins.sinks`` and
  ``wsroute.plugins.redis.entry``, and the test kit ``wsroute.testing``.
- **The library** (docs/library.md): ``wsroute.connect()`` gives a program the
  daemon's own upstream connection (``Client``, ``ClientOptions``,
  ``ConnectOptions``); ``wsroute.sync`` is the same without an event loop.

``__all__`` is exactly these names (and ``dir(wsroute)`` shows nothing else);
the other modules listed by ``help(wsroute)`` are internal (docs/plugins.md
lists them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .exceptions import (
    CodecError,
    ConfigError,
    ConnectionClosed,
    DecodeError,
    EncodeError,
    OptionError,
    OutageExpired,
    PluginError,
    SendError,
    Unavailable,
    WsrouteError,
)
from .plugin import (
    Codec,
    DeadLetter,
    Duration,
    Frame,
    Handler,
    HandlerContext,
    Issue,
    Key,
    Message,
    Outgoing,
    Size,
    Source,
    SourceContext,
    SourceLimits,
    StructArg,
    make_message,
)
from .preflight import check_output_file

if TYPE_CHECKING:
    from .client import Client, ClientOptions, ConnectOptions, connect
    from .codec import BytesCodec, JsonCodec, StructCodec, TextCodec, encode_outgoing
    from .config import ConnectionSection as ConnectionOptions
    from .connection import Connection, ConnectionState
    from .outage import Outage

__version__ = "0.1.0"

# Imported on first use: `import wsroute` stays light and imports no plugin (the
# built-in codecs are plugins) and no WebSocket library.
_LAZY = {
    "BytesCodec": ("codec", "BytesCodec"),
    "JsonCodec": ("codec", "JsonCodec"),
    "StructCodec": ("codec", "StructCodec"),
    "TextCodec": ("codec", "TextCodec"),
    "encode_outgoing": ("codec", "encode_outgoing"),
    "ConnectionOptions": ("config", "ConnectionSection"),
    "Connection": ("connection", "Connection"),
    "ConnectionState": ("connection", "ConnectionState"),
    "Client": ("client", "Client"),
    "ClientOptions": ("client", "ClientOptions"),
    "ConnectOptions": ("client", "ConnectOptions"),
    "connect": ("client", "connect"),
    "Outage": ("outage", "Outage"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'wsroute' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The public names only: not the submodules imported on the way, nor typing's helpers.
    return sorted({*__all__, *(n for n in globals() if n.startswith("__") and n.endswith("__"))})


__all__ = [
    "BytesCodec",
    "Client",
    "ClientOptions",
    "Codec",
    "CodecError",
    "ConfigError",
    "ConnectOptions",
    "Connection",
    "ConnectionClosed",
    "ConnectionOptions",
    "ConnectionState",
    "DeadLetter",
    "DecodeError",
    "Duration",
    "EncodeError",
    "Frame",
    "Handler",
    "HandlerContext",
    "Issue",
    "JsonCodec",
    "Key",
    "Message",
    "OptionError",
    "Outage",
    "OutageExpired",
    "Outgoing",
    "PluginError",
    "SendError",
    "Size",
    "Source",
    "SourceContext",
    "SourceLimits",
    "StructArg",
    "StructCodec",
    "TextCodec",
    "Unavailable",
    "WsrouteError",
    "__version__",
    "check_output_file",
    "connect",
    "encode_outgoing",
    "make_message",
]
