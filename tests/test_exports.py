"""The public surface is exactly the plugin API: adding or removing a name is a decision."""

from __future__ import annotations

import wsroute

PUBLIC = [
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


def test_all_is_pinned() -> None:
    assert sorted(wsroute.__all__) == sorted(PUBLIC)


def test_every_export_exists() -> None:
    for name in wsroute.__all__:
        assert hasattr(wsroute, name), name
