"""The config reference (docs/config.md): a Markdown template filled in from the schema.

Invariant: prose lives in the Markdown template ``reference.md`` next to this
module; code only fills in what is generated from the schema dataclasses (the
key tables, from their types, defaults and ``doc`` metadata, and the built-in
codec names). Every placeholder names a known schema section and every
section has exactly one table, or rendering fails: the docs cannot drift from
the code. docs/config.md is the output; a test fails when they differ.
"""

from __future__ import annotations

import re
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


def _table(cls: type) -> str:
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for doc in field_docs(cls):
        if doc.name == "options":  # not a key: the rest of the table
            continue
        lines.append(_row(cls, doc))
    return "\n".join(lines)


def _row(cls: type, doc: FieldDoc) -> str:
    kind = _TYPE_TEXT.get((cls, doc.name), doc.type)
    if doc.required:
        default = "required"
    elif doc.default == "(table)":
        default = "see below"
    else:
        default = f"`{doc.default}`" if doc.default not in (None, "(none)") else "(none)"
    cells = [f"`{doc.name}`", kind, default, doc.doc]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
