"""What ``wsroute plugins [--json]`` prints: every plugin found, with its options.

:func:`describe` turns :class:`~wsroute.registry.PluginInfo` into plain data
(the ``--json`` form, also what the config reference and the JSON schema
document); :func:`format_plugins` writes the human listing from it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable
from typing import Any

from ..validate import field_docs
from .info import PluginInfo

__all__ = ["describe", "format_plugins"]


def describe(infos: Iterable[PluginInfo]) -> list[dict[str, Any]]:
    """Plain data for ``wsroute plugins --json``: one dict per plugin, options included.

    Each option: ``name``, ``type`` (as the docs write it), ``required``,
    ``default`` as a typed JSON value written the way TOML writes it
    (``false``, ``10``, ``"5s"`` for a duration, ``"1MiB"`` for a size,
    ``null`` for none), ``doc``, and for a nested table its ``fields``, the same
    way. A built-in plugin whose client library is not installed has ``error``
    ``None`` and ``missing_extra`` set to the extra that installs it
    (``"redis"``); ``missing_extra`` is ``None`` for every other plugin.
    """
    result = []
    for info in infos:
        error = None if info.missing_extra else info.error
        options: list[dict[str, Any]] = []
        if info.options is not None:
            try:
                options = _option_docs(info.options)
            except TypeError as exc:
                error = error or str(exc)
        result.append(
            {
                "name": info.name,
                "kind": info.kind,
                "origin": info.origin,
                "package": info.package,
                "version": info.version,
                "target": info.target,
                "doc": info.doc,
                "options": options,
                "error": error,
                "missing_extra": info.missing_extra,
            }
        )
    return result


def _option_docs(cls: type) -> list[dict[str, Any]]:
    from ..config.json_schema import toml_default

    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    found = []
    for doc in field_docs(cls):
        f = fields[doc.name]
        tp = hints[doc.name]
        value: Any = None
        if f.default is not dataclasses.MISSING:
            value = toml_default(tp, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            value = toml_default(tp, f.default_factory())
        entry: dict[str, Any] = {
            "name": doc.name,
            "type": f"{doc.type}, {doc.bounds}" if doc.bounds else doc.type,
            "default": value,
            "doc": doc.doc,
            "required": doc.required,
        }
        nested = _table_type(tp)
        if nested is not None:
            entry["fields"] = _option_docs(nested)
        found.append(entry)
    return found


def _table_type(tp: Any) -> type | None:
    """The dataclass of an option that is a table (``X`` or ``X | None``), else ``None``."""
    arms = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    tables = [a for a in arms if isinstance(a, type) and dataclasses.is_dataclass(a)]
    return tables[0] if len(arms) == 1 and tables else None


def format_plugins(infos: Iterable[PluginInfo]) -> str:
    """The human listing of ``wsroute plugins``: handlers, codecs, sources, with their options.

    A built-in whose client library is missing gets one line, ``not installed (pip
    install 'wsroute[EXTRA]')``; a plugin that fails to load otherwise, an ``ERROR:`` line.
    """
    from .extras import install_command

    described = describe(infos)
    lines: list[str] = []
    kinds = (
        ("handler", "Handler plugins"),
        ("codec", "Codec plugins"),
        ("source", "Source plugins"),
    )
    for kind, title in kinds:
        group = [d for d in described if d["kind"] == kind]
        if kind == "source" and not group:
            continue
        if lines:
            lines.append("")
        lines.append(f"{title}:")
        if not group:
            lines.append("  (none)")
        for plugin in group:
            lines.append("")
            lines.append(f"  {plugin['name']}  ({plugin['origin']}: {plugin['target']})")
            if plugin["missing_extra"]:
                lines.append(f"      not installed ({install_command(plugin['missing_extra'])})")
                continue
            if plugin["error"]:
                lines.append(f"      ERROR: {plugin['error']}")
                continue
            if plugin["doc"]:
                lines.append(f"      {plugin['doc']}")
            if not plugin["options"]:
                lines.append("      (no options)")
            for option in plugin["options"]:
                spec = f"{option['name']}: {option['type']}"
                if option["required"]:
                    spec += ", required"
                elif "fields" in option:
                    spec += " = (table)"
                else:
                    spec += f" = {_toml_text(option['default'])}"
                lines.append(f"      {spec}")
                if option["doc"]:
                    lines.append(f"          {option['doc']}")
    return "\n".join(lines)


def _toml_text(value: Any) -> str:
    """A typed default as the listing writes it: TOML-like, ``(none)`` for none."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(", ", " = "))
    return repr(value)
