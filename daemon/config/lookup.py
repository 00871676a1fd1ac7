"""Lookups on a validated config: the codec a connection uses, what a reload keeps.

Invariant: pure functions of :class:`~wsroute.config.schema.Config` values;
nothing here reads files, loads plugins or reports issues. Whether a codec
plugin exists is the registry's question, asked when plugins are loaded.
"""

from __future__ import annotations

from typing import Any

from .schema import Config


def codec_reference(config: Config, connection: str) -> tuple[str, dict[str, Any]]:
    """The codec plugin name and options table a connection uses.

    A ``[codecs.NAME]`` table named by the connection's ``codec`` wins (even
    over a built-in name); otherwise ``codec`` is itself a plugin name (a
    built-in or an installed codec) used with no options. Whether that plugin
    exists is checked when plugins are loaded, not here. ``KeyError`` for an
    unknown connection. Sources are looked up too: they share the name space.
    """
    section = config.connections.get(connection) or config.sources[connection]
    name = section.codec
    table = config.codecs.get(name)
    if table is not None:
        return table.type, table.options
    return name, {}


def unchanged_sources(old: Config, new: Config) -> set[str]:
    """Names of sources a reload can keep running: same settings, same codec table."""
    return {
        name
        for name, section in new.sources.items()
        if old.sources.get(name) == section
        and codec_reference(old, name) == codec_reference(new, name)
    }


def unchanged_connections(old: Config, new: Config) -> set[str]:
    """Names of connections a reload can keep open: same settings, same codec table."""
    return {
        name
        for name, section in new.connections.items()
        if old.connections.get(name) == section
        and codec_reference(old, name) == codec_reference(new, name)
    }
