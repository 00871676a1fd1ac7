"""The config reference (docs/config.md): a Markdown template filled in from the schema.

Invariant: prose lives in the Markdown template ``reference.md`` next to this
module; code only fills in what is generated from the schema dataclasses (the
key tables, from their types, defaults and ``doc`` metadata, and the built-in
codec names). Every placeholder names a known schema section and every
section has exactly one table, or rendering fails: the docs cannot drift from
the code. docs/config.md is the output; a test fails when they differ.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from importlib import resources

from ..validate import FieldDoc, field_docs
from .cases import ExpectTable, FrameTable, TestCase
from .schema import (
    BUILTIN_CODECS,
    ApiSection,
    CloseFrameSection,
    CodecSection,
    ConnectionSection,
    DaemonSection,
    EverySection,
    ExpectSection,
    HandlerSection,
    ReconnectSection,
    RouteSection,
    SourceSection,
    StepSection,
    StructSection,
    TlsSection,
)

#: The template, a file of this package.
TEMPLATE = "reference.md"

#: The sections a ``{{keys NAME}}`` placeholder may name; each must be documented once.
SECTIONS: dict[str, type] = {
    "DaemonSection": DaemonSection,
    "ApiSection": ApiSection,
    "ConnectionSection": ConnectionSection,
    "TlsSection": TlsSection,
    "ReconnectSection": ReconnectSection,
    "StepSection": StepSection,
    "StructSection": StructSection,
    "ExpectSection": ExpectSection,
    "EverySection": EverySection,
    "CloseFrameSection": CloseFrameSection,
    "CodecSection": CodecSection,
    "RouteSection": RouteSection,
    "HandlerSection": HandlerSection,
    "SourceSection": SourceSection,
    "TestCase": TestCase,
    "FrameTable": FrameTable,
    "ExpectTable": ExpectTable,
}

# Where a generated type name would read badly.
_TYPE_TEXT = {
    (RouteSection, "key"): "route key or array of route keys (string, integer, number, boolean)",
    (ExpectSection, "key"): "route key (string, integer, number, boolean)",
    (StepSection, "json"): "any TOML value",
    (EverySection, "json"): "any TOML value",
    (CloseFrameSection, "json"): "any TOML value",
    (FrameTable, "json"): "any TOML value",
    (ExpectTable, "key"): "route key (string, integer, number, boolean)",
    (ExpectTable, "body"): "any TOML value",
}

# A note to whoever edits the template, left out of the output.
_COMMENT = re.compile(r"\{#.*?#\}\n?", re.DOTALL)
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)(?:\s+(\w+))?\s*\}\}")


def reference_markdown() -> str:
    """The config reference in Markdown: the template with the generated parts filled in.

    docs/config.md is this text; a test fails when they differ, so change the
    schema (types, defaults, ``doc`` metadata) or the prose in
    ``daemon/config/reference.md``, then regenerate with
    ``python -m wsroute.config --reference > docs/config.md``.
    """
    template = resources.files(__package__ or "wsroute.config").joinpath(TEMPLATE)
    return render(template.read_text(encoding="utf-8"))


def render(template: str) -> str:
    """Fill in ``template``: ``{{keys NAME}}`` and ``{{builtin_codecs}}``; drop ``{# #}``."""
    documented: list[str] = []

    def fill(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2)
        if kind == "builtin_codecs" and name is None:
            return ", ".join(f"`{c}`" for c in BUILTIN_CODECS)
        if kind == "builtin_plugins" and name is None:
            return _builtin_plugins()
        if kind == "keys" and name in SECTIONS:
            documented.append(name)
            return _table(SECTIONS[name])
        raise ValueError(f"{TEMPLATE}: unknown placeholder {match.group(0)}")

    text = _PLACEHOLDER.sub(fill, _COMMENT.sub("", template))
    missing = [name for name in SECTIONS if name not in documented]
    twice = sorted({name for name in documented if documented.count(name) > 1})
    if missing or twice:
        raise ValueError(f"{TEMPLATE}: key tables missing {missing}, repeated {twice}")
    return text.rstrip("\n") + "\n"


#: What each kind's table is called, and the key that names the plugin in it.
_KINDS = {
    "handler": ("[handlers.NAME]", "plugin"),
    "codec": ("[codecs.NAME]", "type"),
    "source": ("[sources.NAME]", "type"),
}
#: The extra of ``wsroute`` that installs a built-in's client library, by its module.
_EXTRAS = {"redis": "redis", "nats": "nats", "jetstream": "nats", "webhook": "webhook"}


def _builtin_plugins() -> str:
    """A subsection per built-in plugin: what it is, and its options (nested tables too).

    Only the plugins of wsroute itself, whatever else is installed, so the
    reference is the same on every machine; a built-in whose client library is
    missing here fails the rendering (the reference needs the dev extras).
    """
    from ..registry import Registry

    infos = [info for info in Registry.discover().all() if info.origin == "built-in"]
    parts = []
    for kind, (table, key) in _KINDS.items():
        for info in sorted((i for i in infos if i.kind == kind), key=lambda i: i.name):
            if info.error is not None:
                raise ValueError(f"built-in {kind} plugin {info.name!r}: {info.error}")
            module = info.target.partition(":")[0].split(".")
            extra = next((_EXTRAS[m] for m in module if m in _EXTRAS), None)
            heading = f"### {kind} `{info.name}`"
            where = f'`{key} = "{info.name}"` in a `{table}` table'
            lines = [
                heading,
                "",
                f"{info.doc} ({where}" + (f"; extra `{extra}`)" if extra else ")"),
            ]
            if info.options is None:
                lines += ["", "No options."]
            else:
                lines += _option_tables(info.options, "")
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _option_tables(cls: type, prefix: str) -> list[str]:
    """A key table of ``cls``, then one per nested table option, headed by its dotted key."""
    lines = ["", _table(cls)]
    for doc in field_docs(cls):
        nested = _nested(cls, doc.name)
        if nested is not None:
            lines += ["", f"`{prefix}{doc.name}`:", *_option_tables(nested, f"{prefix}{doc.name}.")]
    return lines


def _nested(cls: type, name: str) -> type | None:
    """The dataclass of option ``name`` when it is a table (``X`` or ``X | None``)."""
    hint = typing.get_type_hints(cls)[name]
    arms = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    tables = [a for a in arms if isinstance(a, type) and dataclasses.is_dataclass(a)]
    return tables[0] if len(arms) == 1 and tables else None


def _table(cls: type) -> str:
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for doc in field_docs(cls):
        if doc.name == "options":  # not a key: the rest of the table
            continue
        lines.append(_row(cls, doc))
    return "\n".join(lines)


def _row(cls: type, doc: FieldDoc) -> str:
    kind = _TYPE_TEXT.get((cls, doc.name), doc.type)
    if doc.bounds:
        kind = f"{kind}, {doc.bounds}"
    if doc.required:
        default = "required"
    elif doc.default == "(table)":
        default = "see below"
    else:
        default = f"`{doc.default}`" if doc.default not in (None, "(none)") else "(none)"
    cells = [f"`{doc.name}`", kind, default, doc.doc]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
