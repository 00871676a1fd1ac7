"""Lint: what is valid but most likely a mistake, reported as warnings.

Invariant: a warning never makes a config invalid and never changes it; lint
runs only on a config that loaded without errors, and only reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

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

    for path, host in _hosts(config):
        if is_placeholder_host(host):
            warn(path, f"{host} is a placeholder (a domain kept for examples): set the real host")

    used = {connection.codec for connection in config.connections.values()}
    used.update(source.codec for source in config.sources.values())
    for name in config.codecs:
        if name not in used:
            warn(join_path("codecs", name), "no connection uses this codec")
    return warnings


#: Domains reserved for documentation and testing: never a real upstream.
PLACEHOLDER_DOMAINS = ("example.com", "example.org", "example.net", "example", "invalid")


def is_placeholder_host(host: str) -> bool:
    """Whether ``host`` is a reserved documentation name, decided from the text alone.

    ``check`` makes no name lookups: a placeholder left in a config is found
    by its name (``ws.example.com``, ``upstream.invalid``), not by failing to
    resolve it.
    """
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in PLACEHOLDER_DOMAINS)


def _hosts(config: Config) -> Iterator[tuple[str, str]]:
    """``(key path, host)`` of every URL the config connects to: connections and plugins' urls."""
    for name, connection in config.connections.items():
        yield from _url_host(join_path(join_path("connections", name), "url"), connection.url)
    for section, tables in (("handlers", config.handlers), ("sources", config.sources)):
        for name, table in tables.items():
            for key in ("url", "urls", "servers"):
                path = join_path(join_path(section, name), key)
                yield from _url_host(path, table.options.get(key))


def _url_host(path: str, value: Any) -> Iterator[tuple[str, str]]:
    for url in value if isinstance(value, list) else [value]:
        if not isinstance(url, str):
            continue
        try:
            host = urlsplit(url).hostname
        except ValueError:
            continue  # a malformed url is the loader's error, not a warning
        if host:
            yield path, host
