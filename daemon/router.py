"""The dispatch registry: (connection, route key) → the handlers that receive a message.

Pure: no I/O, no event loop. Compiled once from ``[routes.NAME]`` and used per
message, so a lookup is one dict access; the first lookup of a (connection, key)
pair walks the rules in file order and memoises the answer.

Rules:

- every route that matches delivers (fan-out), in file order; a handler named by
  several matching routes receives the message once;
- a route without ``connection`` matches every connection (and source);
- a route without ``key`` matches every key except the reserved lifecycle keys
  (``"$connected"``, ``"$disconnected"``), which only routes naming them receive;
- keys beginning with ``$`` belong to the daemon: :meth:`Router.lookup` (decoded
  frames, emitted messages) never matches them, so an upstream cannot pass for
  a lifecycle message; only :meth:`Router.lookup_lifecycle` (the daemon's own
  messages) does;
- a message no route matches goes to the ``unmatched`` target, if any.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .plugin import Key

__all__ = ["Route", "Router", "is_reserved_key"]

T = TypeVar("T", bound=Hashable)

# A memo larger than this is cleared: keys come from upstream data and could be unbounded.
_MEMO_LIMIT = 65536


def is_reserved_key(key: Key) -> bool:
    """Lifecycle keys start with ``$``; routes without ``key`` do not receive them."""
    return isinstance(key, str) and key.startswith("$")


@dataclass(frozen=True)
class Route(Generic[T]):
    """One compiled ``[routes.NAME]``: ``None`` means any connection / any key."""

    name: str
    targets: tuple[T, ...]
    connection: str | None = None
    keys: frozenset[object] | None = None

    def matches(self, connection: str, key: Key) -> bool:
        """Whether a message from ``connection`` with route key ``key`` takes this route."""
        if self.connection is not None and self.connection != connection:
            return False
        if self.keys is None:
            return not is_reserved_key(key)
        return _typed(key) in self.keys


def _typed(key: Key) -> object:
    # Keep True and 1 (and 1.0) apart: JSON `true` must not match route key 1.
    return ("bool", key) if isinstance(key, bool) else key


class Router(Generic[T]):
    """Look up the targets of a message; build one from routes with :meth:`compile`."""

    def __init__(self, routes: Sequence[Route[T]], unmatched: tuple[T, ...] = ()) -> None:
        self.routes = tuple(routes)
        self.unmatched = unmatched
        self._memo: dict[tuple[str, object], tuple[T, ...]] = {}

    @classmethod
    def compile(
        cls,
        rules: Iterable[tuple[str, str | None, Sequence[Key] | None, Sequence[T]]],
        unmatched: T | None = None,
    ) -> Router[T]:
        """Build from ``(name, connection, keys, targets)`` rules in file order."""
        routes = [
            Route(
                name=name,
                targets=tuple(targets),
                connection=connection,
                keys=None if keys is None else frozenset(_typed(k) for k in keys),
            )
            for name, connection, keys, targets in rules
        ]
        return cls(routes, () if unmatched is None else (unmatched,))

    def lookup(self, connection: str, key: Key) -> tuple[T, ...]:
        """The targets of a message, without ``unmatched``: empty when no route matches."""
        # _typed() inlined: this runs once per message
        memo_key = (connection, ("bool", key) if key.__class__ is bool else key)
        try:
            return self._memo[memo_key]
        except KeyError:
            pass
        except TypeError:  # an unhashable key: no route can name it
            return ()
        # A `$` key from upstream matches no route: it is the daemon's.
        targets = () if is_reserved_key(key) else self._resolve(connection, key)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[memo_key] = targets
        return targets

    def lookup_lifecycle(self, connection: str, key: str) -> tuple[T, ...]:
        """The targets of the daemon's own ``$connected``/``$disconnected`` messages."""
        return self._resolve(connection, key)

    def _resolve(self, connection: str, key: Key) -> tuple[T, ...]:
        seen: dict[T, None] = {}
        for route in self.routes:
            if route.matches(connection, key):
                for target in route.targets:
                    seen.setdefault(target, None)
        return tuple(seen)

    def matching_routes(self, connection: str, key: Key) -> list[str]:
        """Names of the routes a message takes: for ``wsroute check`` and debugging."""
        return [r.name for r in self.routes if r.matches(connection, key)]
