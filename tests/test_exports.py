"""The public surface is exactly the plugin API: adding or removing a name is a decision."""

from __future__ import annotations

import wsroute

PUBLIC = [
    "BytesCodec",
    "Client",
    "ClientOptions",
    "Codec",
    "CodecError",
    "ConfigError",
    "ConnectOptions",
    "ConnectionClosed",
    "Connection",
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


def test_all_is_pinned() -> None:
    assert sorted(wsroute.__all__) == sorted(PUBLIC)


def test_every_export_exists() -> None:
    for name in wsroute.__all__:
        assert hasattr(wsroute, name), name
