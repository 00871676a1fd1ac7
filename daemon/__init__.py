"""wsroute: a pluggable message-routing daemon for long-lived WebSocket upstreams.

This package's public surface is the plugin API below; everything else is
internal and may change between releases.
"""

from .exceptions import (
    CodecError,
    ConfigError,
    DecodeError,
    EncodeError,
    PluginError,
    SendError,
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
)
from .preflight import check_output_file

__version__ = "0.1.0"

__all__ = [
    "Codec",
    "CodecError",
    "ConfigError",
    "DeadLetter",
    "DecodeError",
    "Duration",
    "EncodeError",
    "Frame",
    "Handler",
    "HandlerContext",
    "Issue",
    "Key",
    "Message",
    "Outgoing",
    "PluginError",
    "SendError",
    "Size",
    "Source",
    "SourceContext",
    "SourceLimits",
    "StructArg",
    "WsrouteError",
    "__version__",
    "check_output_file",
]
