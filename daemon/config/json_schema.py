"""``wsroute schema``: the config as a JSON Schema (draft 2020-12), for editors and CI.

Generated from the same dataclasses as the config reference (docs/config.md):
their types, defaults and ``doc`` metadata; a plugin's options from its
``Options`` dataclass. A ``[handlers.NAME]`` table is checked against the
options of the plugin its ``plugin`` key names, a ``[codecs.NAME]`` or
``[sources.NAME]`` table against its ``type``'s (``if``/``then`` on the name).

Invariant: what the schema rejects, ``wsroute check`` rejects too (it may
accept less: rules across keys and tables live in ``__post_init__`` and the
loader's passes, which a schema cannot express). A string holding a
``${...}`` reference is accepted wherever a string-written value (a duration,
a size, hex bytes, an enum) is, since it is checked only once interpolated.
A plugin named by ``"package.module:attr"`` or one not loaded here is not
checked beyond the daemon's own keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from ..plugin import Duration, Size
from ..validate import format_duration, format_size
from .schema import (
    SECTIONS,
    CodecSection,
    ConnectionSection,
    DaemonSection,
    HandlerSection,
    RouteSection,
    SourceSection,
)

if TYPE_CHECKING:
    from ..registry import PluginInfo

__all__ = ["DRAFT", "config_schema", "toml_default"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"

# The loader's spellings (wsroute.validate), as patterns.
_DURATION = r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h)\s*)+$"
_SIZE = r"^\s*\d+(\.\d+)?\s*(B|KiB|MiB|GiB|KB|MB|GB)\s*$"
_HEX = r"^\s*([0-9A-Fa-f]{2}\s*)*$"
_NAME = r"^[A-Za-z0-9_-]+$"
# A value written with ${VAR}, ${file:...} or ${credential:...}: checked once interpolated.
_INTERPOLATED: dict[str, Any] = {"type": "string", "pattern": r"\$\{[^}]+\}"}
_TARGET = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


def config_schema(plugins: Iterable[PluginInfo]) -> dict[str, Any]:
    """The JSON Schema of a config file, with the options of ``plugins`` (loaded ones)."""
    loaded = [info for info in plugins if info.obj is not None or info.options is not None]
    by_kind: dict[str, list[PluginInfo]] = {"handler": [], "codec": [], "source": []}
    for info in sorted(loaded, key=lambda i: i.name):
        by_kind[info.kind].append(info)
    properties = {
        "daemon": _table(DaemonSection),
        "connections": _named(
            _table(ConnectionSection), "[connections.NAME]: upstream WebSockets."
        ),
        "sources": _named(
            _plugin_table(SourceSection, "type", by_kind["source"]),
            "[sources.NAME]: producers of frames other than a WebSocket.",
        ),
        "codecs": _named(
            _plugin_table(CodecSection, "type", by_kind["codec"]),
            "[codecs.NAME]: a codec plugin and its options.",
        ),
        "routes": _named(
            _table(RouteSection), "[routes.NAME]: which messages go to which handlers."
        ),
        "handlers": _named(
            _plugin_table(HandlerSection, "plugin", by_kind["handler"]),
            "[handlers.NAME]: a handler plugin, its options and its delivery keys.",
        ),
    }
    return {
        "$schema": DRAFT,
        "title": "wsroute config",
        "description": "The TOML config of the wsroute daemon (`wsroute schema` prints this).",
        "type": "object",
        "properties": {name: properties[name] for name in SECTIONS},
        "additionalProperties": False,
    }


def _named(table: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "type": "object",
        "propertyNames": {"pattern": _NAME},
        "additionalProperties": table,
    }


def _plugin_table(cls: type, key: str, plugins: list[PluginInfo]) -> dict[str, Any]:
    """A section whose ``key`` names a plugin: its own keys, then the plugin's options."""
    own = _table(cls, skip=("options",))
    names = [info.name for info in plugins]
    own["properties"][key] = {
        **own["properties"][key],
        "anyOf": [{"enum": names}, {"type": "string", "pattern": _TARGET}],
    }
    # Open by default: a "module:attr" plugin's options are not known here.
    own.pop("additionalProperties")
    arms = []
    for info in plugins:
        options = _table(info.options) if info.options is not None else _table(_NoOptions)
        closed = {
            # The daemon's keys win: the loader gives them to the daemon, not the plugin.
            "properties": {**options["properties"], **own["properties"]},
            "additionalProperties": False,
        }
        if options.get("required"):
            closed["required"] = options["required"]
        arms.append(
            {
                "if": {"properties": {key: {"const": info.name}}, "required": [key]},
                "then": closed,
            }
        )
    if arms:
        own["allOf"] = arms
    return own


@dataclasses.dataclass
class _NoOptions:
    pass


def _table(cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object schema from a dataclass: a property per field, required ones, closed."""
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        tp = hints[f.name]
        prop = _type(tp)
        doc = f.metadata.get("doc")
        if doc:
            prop["description"] = str(doc)
        if f.default is not dataclasses.MISSING:
            default = toml_default(tp, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = toml_default(tp, f.default_factory())
        else:
            default = None
            required.append(f.name)
        if default is not None:
            prop["default"] = default
        properties[f.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    summary = _summary(cls)
    if summary:
        schema["description"] = summary
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    return schema


def _summary(cls: type) -> str:
    doc = cls.__doc__ or ""
    if doc.startswith(cls.__name__ + "("):  # dataclass' generated signature
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _type(tp: Any) -> dict[str, Any]:
    """The schema of one annotation, as :func:`wsroute.validate.convert` accepts it."""
    if tp is Any:
        return {}
    if tp is Duration:
        return {
            "anyOf": [{"type": "string", "pattern": _DURATION}, {"enum": [0]}, _INTERPOLATED],
            "description": 'A duration: "250ms", "30s", "5m", "1h", "1m30s" (or 0).',
        }
    if tp is Size:
        return {
            "anyOf": [
                {"type": "string", "pattern": _SIZE},
                {"type": "integer", "minimum": 0},
                _INTERPOLATED,
            ],
            "description": 'A size: "512B", "64KiB", "1MiB" (or bytes as an integer).',
        }
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _table(tp)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Literal:
        if all(isinstance(a, str) for a in args):
            return {"anyOf": [{"enum": list(args)}, _INTERPOLATED]}
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:
            return _type(arms[0])
        return {"anyOf": [_type(a) for a in arms]}
    if origin in (list, tuple):
        return {"type": "array", "items": _type(args[0]) if args else {}}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type(args[1]) if len(args) == 2 else {}}
    if tp is bytes:
        return {"anyOf": [{"type": "string", "pattern": _HEX}, _INTERPOLATED]}
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"no JSON Schema for the annotation {tp!r}")


def toml_default(tp: Any, value: Any) -> Any:
    """A default as the TOML that writes it; ``None`` when there is no such value."""
    if value is None or dataclasses.is_dataclass(value):
        return None
    if tp is Duration:
        return format_duration(float(value))
    if tp is Size:
        return format_size(int(value))
    if isinstance(value, bytes):
        return value.hex(" ")
    if isinstance(value, tuple):
        return list(value)
    return value
