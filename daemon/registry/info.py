"""What the registry knows about one plugin: its kind, where it came from, the loaded object.

Invariant: a :class:`PluginInfo` is immutable, and either holds a loaded object that
passed the contract check (``obj`` set, ``error`` ``None``) or the reason it could
not be loaded (``obj`` ``None``, ``error`` set; only :meth:`Registry.all` returns those).
``missing_extra`` is set only with ``error``, for a built-in plugin whose client
library is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["GROUPS", "Kind", "PluginInfo"]

Kind = Literal["handler", "codec", "source"]

#: The entry-point group of each plugin kind.
GROUPS: dict[Kind, str] = {
    "handler": "wsroute.handlers",
    "codec": "wsroute.codecs",
    "source": "wsroute.sources",
}


@dataclass(frozen=True)
class PluginInfo:
    """A plugin found by the registry: where it came from, and the loaded object.

    ``obj`` is the class (or factory) and ``options`` its ``Options`` dataclass
    (``None`` when it takes no options). A plugin that failed to load (only
    returned by :meth:`Registry.all`) has ``obj=None`` and the reason in ``error``.
    """

    name: str
    kind: Kind
    origin: str
    """``built-in``, ``<distribution> <version>``, ``path <file>`` or ``module <name>``."""
    target: str
    """``module:attr``."""
    obj: Any = None
    options: type | None = None
    doc: str = ""
    """The first paragraph of the plugin's docstring."""
    error: str | None = None
    package: str | None = None
    """The distribution (or module) that provides the plugin, for the load log line."""
    version: str | None = None
    missing_extra: str | None = None
    """For a built-in plugin that is not installed: the extra of ``wsroute`` that installs
    its client library (``"redis"``); ``error`` then holds the full import error."""
