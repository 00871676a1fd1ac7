"""How a config wires its handler runners: the route table and the dead letters.

Pure: given a config and the runners by name, :func:`route_table` compiles the
:class:`~wsroute.router.Router` the dispatcher swaps in with one assignment,
and :func:`dead_letter_targets` says where each runner's dead letters go. The
daemon's owner uses both at start and on every reload.
"""

from __future__ import annotations

from collections.abc import Mapping

from .config import Config
from .handler import HandlerRunner
from .router import Router

__all__ = ["dead_letter_targets", "route_table"]


def route_table(config: Config, runners: Mapping[str, HandlerRunner]) -> Router[HandlerRunner]:
    """The routes of ``config`` over ``runners``; ``[daemon] unmatched`` takes the rest."""
    rules = [
        (name, route.connection, route.keys, [runners[h] for h in route.handlers])
        for name, route in config.routes.items()
    ]
    return Router.compile(rules, runners.get(config.daemon.unmatched or ""))


def dead_letter_targets(
    config: Config, runners: Mapping[str, HandlerRunner]
) -> dict[str, HandlerRunner | None]:
    """Each runner's dead-letter runner under ``config``, without changing any runner."""
    default_dlq = config.daemon.dead_letter
    explicit = {h.dead_letter for h in config.handlers.values()}
    dlq_targets = (explicit | {default_dlq}) - {None}
    targets: dict[str, HandlerRunner | None] = {}
    for name, runner in runners.items():
        # A dead-letter handler takes no default dead letter of its own: its
        # failures are logged and counted as lost, never looped back.
        target = runner.section.dead_letter or (None if name in dlq_targets else default_dlq)
        targets[name] = runners[target] if target and target != name else None
    return targets
