"""Plugin discovery and loading: names in the config → checked handler, codec and source classes.

One concept per module:

- :mod:`.info`: :class:`PluginInfo`, the plugin kinds and their entry-point groups;
- :mod:`.discovery`: :class:`Registry`, finding plugins and resolving config names;
- :mod:`.metadata`: entry-point and distribution metadata (distribution, version);
- :mod:`.imports`: importing plugin modules, ``plugin_paths`` first;
- :mod:`.paths`: path security (``plugin_paths`` writable by others are refused);
- :mod:`.contracts`: the contract a plugin must fit, checked when it is loaded;
- :mod:`.extras`: import failures, naming the pip extra that installs a missing module;
- :mod:`.factories`: building options and creating handler, codec and source instances;
- :mod:`.listing`: what ``wsroute plugins [--json]`` prints (:func:`describe`,
  :func:`format_plugins`).

Invariant: importing this package discovers and imports no plugin.
"""

from __future__ import annotations

from .contracts import plugin_info
from .discovery import Registry
from .factories import build_options, create_codec, create_handler, create_source
from .info import GROUPS, Kind, PluginInfo
from .listing import describe, format_plugins
from .paths import check_plugin_path

__all__ = [
    "GROUPS",
    "Kind",
    "PluginInfo",
    "Registry",
    "build_options",
    "check_plugin_path",
    "create_codec",
    "create_handler",
    "create_source",
    "describe",
    "format_plugins",
    "plugin_info",
]
