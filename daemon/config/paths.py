"""Dotted key paths, the way errors name a value: ``routes.market.handlers[1]``.

Invariant: :func:`split_path` is the inverse of
:func:`~wsroute.validate.join_path` (and of :func:`join_parts`): parts are
strings (quoted when not bare TOML keys) and ``[i]`` array indexes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..validate import join_path

_PATH_PART = re.compile(r'\[(\d+)\]|\.?(?:"((?:[^"\\]|\\.)*)"|([A-Za-z0-9_-]+))')


def split_path(path: str) -> list[str | int]:
    """The parts of a dotted key path as :func:`~wsroute.validate.join_path` writes it.

    ``'routes.market.handlers[1]'`` → ``["routes", "market", "handlers", 1]``;
    quoted parts (``connections."a b"``) are unquoted.
    """
    parts: list[str | int] = []
    pos = 0
    while pos < len(path):
        match = _PATH_PART.match(path, pos)
        if not match or match.end() == pos:
            raise ValueError(f"not a key path: {path!r}")
        if match.group(1) is not None:
            parts.append(int(match.group(1)))
        elif match.group(2) is not None:
            parts.append(match.group(2).replace('\\"', '"'))
        else:
            parts.append(match.group(3))
        pos = match.end()
    return parts


def join_parts(parts: Sequence[str | int]) -> str:
    """The key path of ``parts``: the inverse of :func:`split_path`."""
    path = ""
    for part in parts:
        path = join_path(path, part)
    return path


def within(ancestor: str, path: str) -> bool:
    """Whether ``path`` is ``ancestor`` or lies inside it."""
    if not ancestor:
        return True
    return path == ancestor or path.startswith((ancestor + ".", ancestor + "["))
