"""``wsroute schema``: the config as a JSON Schema (draft 2020-12), for editors and CI.

Generated from the same dataclasses as the config reference (docs/config.md):
their types, defaults, bounds and ``doc`` metadata; a plugin's options from its
``Options`` dataclass. A ``[handlers.NAME]`` table is checked against the
options of the plugin its ``plugin`` key names, a ``[codecs.NAME]`` or
``[sources.NAME]`` table against its ``type``'s (``if``/``then`` on the name).

Invariant: what the schema rejects, ``wsroute check`` rejects too, and the
other way round for a value on its own (its type, bounds, enum, spelling);
rules across keys and tables live in ``__post_init__`` and the loader's passes,
which a schema cannot express. A string holding a ``${...}`` reference is
accepted wherever a string is, since it is checked only once interpolated. A
plugin named by ``"package.module:attr"`` or one not loaded here is not checked
beyond the daemon's own keys.

Shaped for the messages an editor shows (Taplo and the editors built on it
report each failed keyword at the value it failed on, and an error about a
table at every key inside it): an enum is ``if``/``else`` so its message lists
the allowed values; an unknown key fails at its own value (at each key of an
unknown table), never at the table around it; the daemon's keys are checked
once in a plugin's table, not again in the plugin's branch.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from ..plugin import Duration, Size
from ..validate import MAX_SIZE, format_duration, format_size
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

# The loader's spellings (wsroute.validate), as patterns: parse_duration strips the
# text, allows any whitespace between a number and its unit, only spaces between parts.
_DURATION = r"\s*([0-9]+(\.[0-9]+)?\s*(ms|s|m|h) *)+\s*$"
_SIZE = r"\s*[0-9]+(\.[0-9]+)?\s*(B|KiB|MiB|GiB|KB|MB|GB)\s*$"
_NONZERO = r"(?=.*[1-9])"  # a duration or size above 0 has a digit that is not 0
_HEX = r"^\s*([0-9A-Fa-f]{2}\s*)*$"
_NAME = r"^[A-Za-z0-9_-]+$"
# A value written with ${VAR}, ${file:...} or ${credential:...}: checked once interpolated.
_INTERPOLATED = r"\$\{[^}]+\}"
_TARGET = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
_UNKNOWN = "#/$defs/unknown-key"
_BAD_NAME = "#/$defs/bad-name"


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
        "additionalProperties": {"$ref": _UNKNOWN},
        "$defs": {
            "unknown-key": _at_every_key(_UNKNOWN, "unknown key: not a key of this table"),
            "bad-name": _at_every_key(
                _BAD_NAME, 'invalid name: use only letters, digits, "_" and "-"'
            ),
        },
    }


def _at_every_key(ref: str, message: str) -> dict[str, Any]:
    """Fails at every value inside (an error at a table is shown at each of its keys)."""
    return {
        "if": {"type": "object", "minProperties": 1},
        "then": {"additionalProperties": {"$ref": ref}},
        "else": {
            "if": {"type": "array", "minItems": 1},
            "then": {"items": {"$ref": ref}},
            # Always fails; the message shows this schema, so it carries the explanation.
            "else": {"not": {"description": message}},
        },
    }


def _named(table: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "type": "object",
        "patternProperties": {_NAME: table},
        "additionalProperties": {"$ref": _BAD_NAME},
    }


def _or_interpolated(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema``, unless the value is a string with a ``${...}`` (checked once expanded).

    ``if``/``else`` rather than ``anyOf``: a failure reports ``schema``'s own message
    (``"drop-old" is not one of [...]``), not that no branch of an ``anyOf`` matched.
    """
    return {"if": {"type": "string", "pattern": _INTERPOLATED}, "else": schema}


def _plugin_table(cls: type, key: str, plugins: list[PluginInfo]) -> dict[str, Any]:
    """A section whose ``key`` names a plugin: its own keys, then the plugin's options."""
    own = _table(cls, skip=("options",))
    names = [info.name for info in plugins]
    own["properties"][key] = {
        **own["properties"][key],
        "type": "string",
        # "module:attr" and ${...} are not known here; any other name must be installed.
        "if": {"pattern": f"{_INTERPOLATED}|:"},
        "then": {"pattern": f"{_INTERPOLATED}|{_TARGET}"},
        "else": {"enum": names},
    }
    # Open by default: a "module:attr" plugin's options are not known here.
    own.pop("additionalProperties")
    arms = []
    for info in plugins:
        options = _table(info.options) if info.options is not None else _table(_NoOptions)
        closed = {
            # The daemon's keys are checked above, once: here they are only allowed.
            "properties": {**options["properties"], **dict.fromkeys(own["properties"], True)},
            "additionalProperties": {"$ref": _UNKNOWN},
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
        prop = _type(tp, f.metadata)
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
    schema["additionalProperties"] = {"$ref": _UNKNOWN}
    return schema


def _summary(cls: type) -> str:
    doc = cls.__doc__ or ""
    if doc.startswith(cls.__name__ + "("):  # dataclass' generated signature
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _bounds(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A field's bounds (``wsroute.validate.BOUNDS``) as JSON Schema keywords."""
    keywords = {"minimum": "minimum", "above": "exclusiveMinimum", "maximum": "maximum"}
    return {keywords[k]: v for k, v in metadata.items() if k in keywords}


def _type(tp: Any, metadata: Mapping[str, Any] = {}) -> dict[str, Any]:
    """The schema of one annotation and its field's metadata: bounds, and the JSON
    Schema keywords of ``metadata["schema"]`` (a rule its ``__post_init__`` checks)."""
    extra = dict(metadata.get("schema", {}))
    if tp is str and extra:
        return {"type": "string", **_or_interpolated(extra)}
    return {**_type_only(tp, metadata), **extra}


def _type_only(tp: Any, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The schema of one annotation, as :func:`wsroute.validate.convert` accepts it."""
    if tp is Any:
        return {}
    if tp is Duration:
        positive = metadata.get("above") is not None or (metadata.get("minimum") or 0) > 0
        text = {"type": "string", "pattern": f"^{_NONZERO if positive else ''}{_DURATION}"}
        return {
            **_or_interpolated(text if positive else {"if": {"const": 0}, "else": text}),
            "examples": ["30s"],
        }
    if tp is Size:
        low = metadata.get("minimum") or 0
        text = {"type": "string", "pattern": f"^{_NONZERO if low > 0 else ''}{_SIZE}"}
        number = {"type": "integer", "minimum": low, "maximum": MAX_SIZE}
        return {
            **_or_interpolated({"if": {"type": "number"}, "then": number, "else": text}),
            "examples": ["1MiB"],
        }
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _table(tp)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Literal:
        if all(isinstance(a, str) for a in args):
            return _or_interpolated({"enum": list(args)})
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:
            return _type_only(arms[0], metadata)
        return {"anyOf": [_type(a) for a in arms]}
    if origin in (list, tuple):
        return {"type": "array", "items": _type(args[0]) if args else {}}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type(args[1]) if len(args) == 2 else {}}
    if tp is bytes:
        return _or_interpolated({"type": "string", "pattern": _HEX})
    if tp is int:
        return {"type": "integer", **_bounds(metadata)}
    if tp is float:
        return {"type": "number", **_bounds(metadata)}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
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
