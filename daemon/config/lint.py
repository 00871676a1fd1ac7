"""Lint: what is valid but most likely a mistake, reported as warnings.

Invariant: a warning never makes a config invalid and never changes it; lint
runs only on a config that loaded without errors, and only reads it.
"""

from __future__ import annotations

from ..exceptions import ConfigIssue
from ..validate import _show as show_value
from ..validate import did_you_mean, join_path
from .schema import BUILTIN_CODECS, Config


def warnings_of(config: Config) -> list[ConfigIssue]:
    """What is valid but most likely a mistake: tables that take part in nothing."""
    warnings: list[ConfigIssue] = []

    def warn(path: str, message: str) -> None:
        warnings.append(ConfigIssue(path, message, warning=True))

    fed = {name for route in config.routes.values() for name in route.handlers}
    fed.update(h.dead_letter for h in config.handlers.values() if h.dead_letter)
    fed.update(n for n in (config.daemon.dead_letter, config.daemon.unmatched) if n)
    fed.update(s.dead_letter for s in config.sources.values() if s.dead_letter)
    for name in config.handlers:
        if name not in fed:
            warn(
                join_path("handlers", name),
                "never receives messages: no route, dead_letter or unmatched names it",
            )

    wildcard = any(route.connection is None for route in config.routes.values())
    routed = {route.connection for route in config.routes.values()}
    for name, connection in config.connections.items():
        path = join_path("connections", name)
        if not wildcard and name not in routed:
            fate = (
                f'all go to the unmatched handler "{config.daemon.unmatched}"'
                if config.daemon.unmatched
                else "are only counted as unmatched"
            )
            warn(path, f"no route takes messages from this connection: they {fate}")
        codec = connection.codec
        if codec not in config.codecs and codec not in BUILTIN_CODECS:
            hint = did_you_mean(codec, [*config.codecs, *BUILTIN_CODECS])
            if hint:
                # Not an error: an installed codec plugin may be called that.
                warn(
                    join_path(path, "codec"),
                    f"{show_value(codec)} is neither a [codecs.NAME] table nor a built-in "
                    f"codec{hint}",
                )

    used = {connection.codec for connection in config.connections.values()}
    used.update(source.codec for source in config.sources.values())
    for name in config.codecs:
        if name not in used:
            warn(join_path("codecs", name), "no connection uses this codec")
    return warnings
