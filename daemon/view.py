"""What observers of a running daemon may see: a read-only view, typed as a Protocol.

The API (``/status``, ``/metrics``, ``/ready``, ``/tap``), :mod:`wsroute.snapshot`
and the STATUS= line read the running daemon through :class:`DaemonView`, never
through :class:`~wsroute.service.Service`: mypy rejects any attribute not named
here, so an observer cannot reach into the owner's state or change it. The one
thing an observer may change is the tap hook (:meth:`DaemonView.set_tap`), which
costs the frame path one attribute check while nobody taps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .budget import MemoryBudget
    from .config import Config
    from .connection import Connection
    from .handler import HandlerRunner, HandlerStats
    from .plugin import Message
    from .sources import SourceSupervisor

__all__ = ["DaemonView", "TapHook"]

#: Called for every message the dispatcher routes, with the runners it goes to.
TapHook = Callable[["Message", "tuple[HandlerRunner, ...]"], None]


class DaemonView(Protocol):
    """The running daemon as its observers see it: read-only, current at each read."""

    @property
    def config(self) -> Config:
        """The running config (the last one a reload applied)."""

    @property
    def connections(self) -> Mapping[str, Connection]: ...

    @property
    def runners(self) -> Mapping[str, HandlerRunner]:
        """The handler runners of the running config, by handler name."""

    @property
    def sources(self) -> Mapping[str, SourceSupervisor]: ...

    @property
    def retiring(self) -> Sequence[HandlerRunner]:
        """Runners a reload replaced or removed that still drain."""

    @property
    def retired(self) -> Mapping[str, HandlerStats]:
        """Final counts of replaced runners, by a name the running config still has."""

    @property
    def budget(self) -> MemoryBudget: ...

    @property
    def unmatched(self) -> Mapping[str, int]:
        """Messages no route matched, by connection or source (0 for any other name)."""

    @property
    def decode_errors(self) -> Mapping[str, int]:
        """Frames the codec could not decode, by connection or source (0 for any other)."""

    @property
    def started_at(self) -> float: ...

    @property
    def config_loaded_at(self) -> float: ...

    @property
    def reload_failed(self) -> bool: ...

    @property
    def reloads(self) -> Mapping[str, int]:
        """Reloads by result: ``success``, ``failure``."""

    def set_tap(self, hook: TapHook | None) -> None:
        """Install (or, with ``None``, remove) the hook that sees every routed message."""
