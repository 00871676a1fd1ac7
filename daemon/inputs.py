"""Reading the files an operator hands to wsroute, with bounds.

Every file wsroute reads on an operator's word — the config, a tests file,
what ``${file:...}`` and ``${credential:...}`` name, a file to replay — goes
through :func:`read_file` (or :func:`open_records` for replay's records), so
that none of them can hang the command or fill its memory:

- only a regular file is read: a FIFO, a device, a socket or a folder is
  refused by what it is (the file is opened without blocking, then looked at);
- a file larger than its limit is refused before it is read (a sparse 8 GiB
  file costs nothing), and one that grows past it while read is refused too;
- nesting (arrays and tables in TOML) deeper than :data:`MAX_DEPTH` is
  refused by :func:`too_deep`, so that nothing past the parser recurses without
  bound; binary input is named as such by :func:`decode_text`.

Invariant: every refusal is an :class:`InputRefused` whose text is one line
that names what is wrong, never a file's content.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any, BinaryIO

from .exceptions import WsrouteError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_RECORD_BYTES",
    "MAX_VALUE_FILE_BYTES",
    "InputRefused",
    "decode_text",
    "nested_too_deep",
    "open_records",
    "read_file",
    "records",
    "too_deep",
]

#: Largest config or tests file read (4 MiB).
MAX_CONFIG_BYTES = 4 * 2**20
#: Largest file a ``${file:...}`` or ``${credential:...}`` reference reads (1 MiB,
#: systemd's own limit for a credential).
MAX_VALUE_FILE_BYTES = 2**20
#: Largest record (one line) ``wsroute replay`` reads (64 MiB).
MAX_RECORD_BYTES = 64 * 2**20
#: Deepest nesting of arrays and tables in a config or tests file.
MAX_DEPTH = 64

_CHUNK = 2**16


class InputRefused(WsrouteError):
    """A file that is not read, and why, in words that never quote its content.

    ``line`` is the line where the problem is, when there is one.
    """

    line: int | None = None


def _kind(mode: int) -> str | None:
    """What a file that is not a regular file is, or ``None`` for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _open(path: str) -> int:
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputRefused(exc.strerror or type(exc).__name__) from None
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise InputRefused(f"{kind}, not a regular file" if kind[0] == "a" else kind)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _too_large(limit: int) -> InputRefused:
    return InputRefused(f"larger than the limit of {_size(limit)}")


def read_file(path: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``; :class:`InputRefused` when it cannot be
    read, is not a regular file, or holds more than ``limit`` bytes."""
    fd = _open(path)
    try:
        if os.fstat(fd).st_size > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            except OSError as exc:
                raise InputRefused(exc.strerror or type(exc).__name__) from None
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # it grew while being read
                raise _too_large(limit)
    finally:
        os.close(fd)


def decode_text(data: bytes) -> str:
    """``data`` as UTF-8 text; :class:`InputRefused` (with ``line`` set) naming binary
    input as such, and the byte where it stops being text."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        binary = b"\0" in data[: exc.start + _CHUNK]
        what = "a binary file, not UTF-8 text" if binary else "not UTF-8 text"
        refused = InputRefused(f"{what} (byte {exc.start})")
        refused.line = data.count(b"\n", 0, exc.start) + 1
        raise refused from None


def open_records(path: str) -> BinaryIO:
    """``path`` opened for :func:`records` (a regular file only; :class:`InputRefused`)."""
    return os.fdopen(_open(path), "rb", buffering=0)


def records(
    file: BinaryIO, limit: int = MAX_RECORD_BYTES
) -> Iterator[tuple[int, bytearray | None]]:
    """``(line number, line)`` for each line of ``file``. A line longer than ``limit``
    bytes is given as ``None`` and never held whole, so that memory stays within
    ``limit`` whatever the file holds. A line is only valid until the next one is asked for.
    """
    number = 0
    line = bytearray()
    skipping = False
    while True:
        chunk = file.read(_CHUNK)
        if not chunk:
            if line or skipping:
                yield number + 1, None if skipping else line
            return
        start = 0
        while start < len(chunk):
            newline = chunk.find(b"\n", start)
            end = len(chunk) if newline < 0 else newline + 1
            if not skipping:
                if len(line) + end - start > limit + 1:  # the newline is not counted
                    skipping = True
                    line = bytearray()
                else:
                    line += chunk[start:end]
            start = end
            if newline >= 0:
                number += 1
                yield number, None if skipping else line
                line = bytearray()
                skipping = False


def too_deep(document: Any, limit: int = MAX_DEPTH) -> list[str | int] | None:
    """The keys to the first array or table nested deeper than ``limit`` levels in
    ``document`` (a top-level table is level 1), or ``None``. Walks without recursing
    and holds one iterator per level, so any depth and any size is safe."""
    keys: list[str | int] = []
    stack: list[Iterator[tuple[str | int, Any]]] = []

    def children(value: Any) -> Iterator[tuple[str | int, Any]] | None:
        if isinstance(value, dict):
            return iter(value.items())
        if isinstance(value, list):
            return enumerate(value)
        return None

    first = children(document)
    if first is None:
        return None
    stack.append(first)
    while stack:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
            if keys:
                keys.pop()
            continue
        key, value = step
        inner = children(value)
        if inner is None:
            continue
        keys.append(key)
        if len(keys) > limit:
            return keys
        stack.append(inner)
    return None


def nested_too_deep(limit: int = MAX_DEPTH) -> str:
    """The words for a document :func:`too_deep` refused (or its parser ran out of stack on)."""
    return f"nested more than {limit} levels deep (arrays and tables)"


def _size(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit} bytes"
