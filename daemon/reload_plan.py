"""What a reload changes: config A → config B, computed without I/O.

:func:`reload_plan` compares two valid configs and says, for the handlers, the
connections and the sources, which names are *kept* (same settings: they go on
running untouched, a connection keeps its socket), *restarted* (same name, new
settings: a new one is started next to the old, which then stops), *added* and
*removed*. A connection or source also restarts when the ``[codecs.NAME]`` table
it decodes with changed. The daemon's owner then applies the plan
(:func:`wsroute.reload.apply`); nothing here opens a socket or starts a task,
so the plan is tested on configs alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .config import Config, unchanged_connections, unchanged_sources

__all__ = ["Changes", "ReloadPlan", "reload_plan"]


@dataclass(frozen=True)
class Changes:
    """One kind of part (handlers, connections or sources) across a reload, by name."""

    kept: frozenset[str] = frozenset()
    restarted: frozenset[str] = frozenset()
    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()

    @property
    def started(self) -> frozenset[str]:
        """Built and started new: the restarted and the added."""
        return self.restarted | self.added

    @property
    def stopped(self) -> frozenset[str]:
        """Stopped for good: the old ones of the restarted, and the removed."""
        return self.restarted | self.removed

    @staticmethod
    def between(old: Mapping[str, object], new: Mapping[str, object], kept: set[str]) -> Changes:
        """The changes from the names of ``old`` to those of ``new``, given the kept ones."""
        return Changes(
            kept=frozenset(kept),
            restarted=frozenset(n for n in new if n in old and n not in kept),
            added=frozenset(n for n in new if n not in old),
            removed=frozenset(n for n in old if n not in new),
        )


@dataclass(frozen=True)
class ReloadPlan:
    """Everything a reload from one config to another starts, keeps and stops."""

    handlers: Changes
    connections: Changes
    sources: Changes


def reload_plan(old: Config, new: Config, *, upstreams: bool = True) -> ReloadPlan:
    """The plan of a reload from ``old`` to ``new``.

    ``upstreams=False`` is a daemon that opens no connection and runs no source
    (``wsroute replay``): only its handlers change.
    """
    kept_handlers = {n for n, section in new.handlers.items() if old.handlers.get(n) == section}
    handlers = Changes.between(old.handlers, new.handlers, kept_handlers)
    if not upstreams:
        return ReloadPlan(handlers, Changes(), Changes())
    return ReloadPlan(
        handlers,
        Changes.between(old.connections, new.connections, unchanged_connections(old, new)),
        Changes.between(old.sources, new.sources, unchanged_sources(old, new)),
    )
