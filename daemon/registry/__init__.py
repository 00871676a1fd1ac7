"""Plugin discovery and loading: names in the config → checked handler, codec and source classes.

One concept per module:

- :mod:`.info`: :class:`PluginInfo`, the plugin kinds and their entry-point groups;
- :mod:`.discovery`: :class:`Registry`, finding plugins and resolving config names;
- :mod:`.metadata`: entry-point and distribution metadata (distribution, version);
- :mod:`.imports`: importing plugin modules, ``plugin_paths`` first;
- :mod:`.paths`: path security (``plugin_paths`` writable by others are refused);
- :mod:`.contracts`: the contract a plugin must fit, checked when it is loaded;
- :mod:`.extras`: import failures, naming the pip extra that installs a missing module;
- :mod:`.factories`: building options and creating handler, codec and source instances.

What ``wsroute plugins [--json]`` prints belongs to the CLI (:mod:`wsroute.cli`);
:func:`describe` and :func:`format_plugins` are still importable from here.

Invariant: importing this package discovers and imports no plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .contracts import plugin_info
from .discovery import Registry
from .factories import build_options, create_codec, create_handler, create_source
from .info import GROUPS, Kind, PluginInfo
from .paths import check_plugin_path

if TYPE_CHECKING:
    from ..cli import describe, format_plugins

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

_FROM_CLI = ("describe", "format_plugins")


def __getattr__(name: str) -> Any:
    # The listing lives in the CLI; imported on first use so the registry does not load the CLI.
    if name in _FROM_CLI:
        from .. import cli

        return getattr(cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
