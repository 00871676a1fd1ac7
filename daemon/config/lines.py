"""Line numbers: a best-effort map from key paths to the lines of TOML text that set them.

Invariant: a line scanner, not a parser. It never raises on text ``tomllib``
accepted and never changes what a config means; when it cannot tell, it gives
the nearest enclosing table's line or ``None``. Only error messages use it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence

from ..validate import join_path
from .paths import join_parts, split_path, within

_KEY_PART = re.compile(r"""\s*([A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')\s*""")


def line_of(text: str, path: str) -> int | None:
    """The line of TOML ``text`` where the key ``path`` is set, or its nearest table.

    Best effort, for error messages: a table header (``[connections.x]``), an
    array-of-tables header (``[[connections.x.on_connect]]``, counted for the
    ``[i]`` index), a ``key = value`` line; a key inside an inline table maps
    to the line of the inline table; a missing key to its table's header.
    """
    return line_in(line_index(text), path)


def line_in(index: Mapping[str, int], path: str) -> int | None:
    """:func:`line_of` with the text already scanned by :func:`line_index`."""
    if not path:
        return None
    if path in index:
        return index[path]
    # A table that has no header of its own (only [a.b.c] or dotted keys below it).
    inside = [line for p, line in index.items() if within(path, p)]
    if inside:
        return min(inside)
    try:
        parts = split_path(path)
    except ValueError:
        return None
    while len(parts) > 1:
        parts.pop()
        ancestor = join_parts(parts)
        if ancestor in index:
            return index[ancestor]
    return None


def line_index(text: str) -> dict[str, int]:
    """Every key path the text sets (tables and keys) → the first line that sets it."""
    index: dict[str, int] = {}
    tables: dict[str, int] = {}  # array-of-tables path → elements seen so far
    table = ""
    multiline: str | None = None  # the delimiter of an open multi-line string
    for number, line in enumerate(text.splitlines(), 1):
        if multiline is not None:
            if multiline in line:
                multiline = None
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            is_array = stripped.startswith("[[")
            parts = _key_parts(stripped, 2 if is_array else 1)
            if parts is None:
                continue
            table = _header_path(parts[0], tables, is_array)
            index.setdefault(table, number)
            continue
        parts = _key_parts(line, 0)
        if parts is None or not line[parts[1] :].startswith("="):
            continue
        index.setdefault(join_parts([*split_path(table), *parts[0]]), number)
        value = line[parts[1] + 1 :]
        for delimiter in ('"""', "'''"):
            if value.count(delimiter) % 2 == 1:
                multiline = delimiter
    return index


def _key_parts(line: str, pos: int) -> tuple[list[str], int] | None:
    """A dotted TOML key at ``pos``: its unquoted parts and where it ends."""
    parts: list[str] = []
    while True:
        match = _KEY_PART.match(line, pos)
        if not match:
            return None
        token = match.group(1)
        if token[0] in "\"'":
            try:
                token = next(iter(tomllib.loads(f"{token} = 0")))
            except tomllib.TOMLDecodeError:
                return None
        parts.append(token)
        pos = match.end()
        if not line.startswith(".", pos):
            return parts, pos
        pos += 1


def _header_path(parts: Sequence[str], arrays: dict[str, int], is_array: bool) -> str:
    path = ""
    for i, part in enumerate(parts):
        path = join_path(path, part)
        if is_array and i == len(parts) - 1:
            count = arrays.get(path, 0)
            arrays[path] = count + 1
            path = join_path(path, count)
        elif path in arrays:
            # [a.b.c] after [[a.b]] belongs to the last element of a.b.
            path = join_path(path, arrays[path] - 1)
    return path
