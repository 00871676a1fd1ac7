"""wsroute: a pluggable message-routing daemon for long-lived WebSocket upstreams.

This package's public surface is the plugin API below; everything else is
internal and may change between releases.
"""

from __future__ import annotations

import importlib
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
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


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
