"""Turn a profile of ``wsroute run`` into a short "where the time goes" report.

``summarize_pyspy(path)`` reads py-spy's ``--format raw`` output (one collapsed
stack per line, ``frame;frame;... COUNT``) and prints self time per component
(websockets, asyncio, anyio, wsroute's modules, the handler) and the top
functions by self and by inclusive time. ``summarize_cprofile(path)`` prints
pstats' top functions. ``python bench/profile_report.py FILE`` does either,
by the file's suffix.
"""

from __future__ import annotations

import io
import pstats
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# (substring of the file path, component) — first match wins.
_COMPONENTS = [
    ("websockets/asyncio/messages", "websockets: message assembler (recv queue)"),
    ("websockets/asyncio", "websockets: asyncio connection"),
    ("websockets/", "websockets: protocol/frames"),
    ("asyncio/", "asyncio event loop"),
    ("anyio/", "anyio"),
    ("daemon/connection", "wsroute connection (per-frame handler)"),
    ("daemon/transport", "wsroute transport (reader loop)"),
    ("daemon/codec", "wsroute codec (decode)"),
    ("daemon/dispatch", "wsroute dispatch"),
    ("daemon/router", "wsroute router"),
    ("daemon/handler", "wsroute handler runner (offer/_worker/_deliver)"),
    ("daemon/plugin", "wsroute Frame/Message"),
    ("daemon/", "wsroute other"),
    ("benchcount", "bench handler (counting)"),
    ("selectors", "selectors/epoll"),
]


def _component(file: str) -> str:
    for needle, name in _COMPONENTS:
        if needle in file:
            return name
    return "other: " + file.rsplit("/", 1)[-1]


def _short(file: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def parse_frame(text: str) -> tuple[str, str]:
    """``"func (path/file.py:12)"`` → ``("func", "path/file.py")``."""
    m = _FRAME.match(text.strip())
    if not m:
        return text.strip(), ""
    return m.group("func"), m.group("file")


def summarize_pyspy(path: str | Path, top: int = 25) -> str:
    """Self time per component and top functions from py-spy raw (collapsed) output."""
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    comp: Counter[str] = Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f[1]]  # drop process/thread pseudo-frames
        if not frames:
            continue
        total += count
        func, file = frames[-1]
        self_fn[f"{func} ({_short(file)})"] += count
        comp[_component(file)] += count
        for key in {f"{fn} ({_short(fl)})" for fn, fl in frames}:
            incl_fn[key] += count
    if not total:
        return "no samples"
    out = io.StringIO()
    out.write(f"{total} samples (CPU-active only)\n\nself time by component:\n")
    for name, n in comp.most_common():
        out.write(f"  {100 * n / total:5.1f}%  {name}\n")
    out.write("\ntop functions by self time:\n")
    for name, n in self_fn.most_common(top):
        out.write(f"  {100 * n / total:5.1f}%  {name}\n")
    out.write("\ntop functions by inclusive time:\n")
    for name, n in incl_fn.most_common(top):
        out.write(f"  {100 * n / total:5.1f}%  {name}\n")
    return out.getvalue()


def summarize_cprofile(path: str | Path, top: int = 25) -> str:
    """pstats' top functions by own time and by cumulative time."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


if __name__ == "__main__":
    target = sys.argv[1]
    print(summarize_cprofile(target) if target.endswith(".prof") else summarize_pyspy(target))
