"""Entry-point and distribution metadata: which distribution registers a plugin, at what version.

Invariant: everything here reads installed metadata (``importlib.metadata``) and
imports nothing; a plugin's code runs only when the registry loads it.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Mapping
from functools import cache

__all__ = ["SELF_DIST", "dist_of", "entry_points", "ep_origin", "normalise", "package_of"]

#: The distribution whose entry points are the built-ins (its plugins show as ``built-in``).
SELF_DIST = "wsroute"


def dist_of(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    """The name and version of the distribution that registers ``ep`` (``"?"`` if unknown)."""
    dist = ep.dist
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"] or dist.name, dist.version


def normalise(dist: str) -> str:
    """A distribution name in one spelling, for comparing names."""
    return dist.lower().replace("_", "-").replace(".", "-")


def ep_origin(ep: importlib.metadata.EntryPoint) -> str:
    """``built-in`` for our own entry points, else ``<distribution> <version>``."""
    dist, version = dist_of(ep)
    return "built-in" if normalise(dist) == SELF_DIST else f"{dist} {version}"


def entry_points(group: str) -> dict[str, list[importlib.metadata.EntryPoint]]:
    """The entry points of ``group`` by name; a name registered twice keeps both (a conflict)."""
    found: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=group):
        same = found.setdefault(ep.name, [])
        # The same distribution seen twice on sys.path is one registration, not a conflict.
        if not any(e.value == ep.value and dist_of(e) == dist_of(ep) for e in same):
            same.append(ep)
    return found


@cache
def _module_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def package_of(modname: str) -> tuple[str | None, str | None]:
    """The distribution and version that installed the top-level module, if any."""
    top = modname.partition(".")[0]
    for dist in _module_distributions().get(top, []):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    module = sys.modules.get(top)
    version = getattr(module, "__version__", None)
    return top, version if isinstance(version, str) else None
