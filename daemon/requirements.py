"""The installed dependencies against the versions wsroute needs: one line each, not a traceback.

The requirements are read from wsroute's own installed metadata
(``Requires-Dist``), so pyproject.toml stays the one place that states them:
every core dependency must be installed at a version its specifiers allow;
a package of an extra (``redis``, ``nats``, ...) is checked when it is
installed. A dependency older than its floor would otherwise fail somewhere
in an import or a call, as a traceback naming none of this.

``wsroute run`` and ``wsroute check`` call :func:`problems` before importing
anything that needs a dependency (the ``wsroute`` command starts in
:func:`main`) and exit 78 with one line per problem. Only the standard
library is imported here.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from collections.abc import Sequence

__all__ = ["main", "problems"]

EX_CONFIG = 78
_SELF = "wsroute"
# Extras that are not the daemon's: the developers' tools, the plugin authors' pytest.
_NOT_CHECKED = frozenset({"dev", "testing"})

_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*\(?(?P<spec>[^;)]*)\)?"
    r"\s*(?:;(?P<marker>.*))?$"
)
_EXTRA = re.compile(r"""\bextra\s*==\s*["'](?P<extra>[^"']+)["']""")
_CLAUSE = re.compile(r"^\s*(?P<op>~=|===|==|!=|<=|>=|<|>)\s*(?P<version>\S+)\s*$")
_RELEASE = re.compile(r"\d+(?:\.\d+)*")

# Set once the check ran for this process (the command's entry and cli.main both ask).
_done = False


def _release(version: str) -> tuple[int, ...]:
    """The release numbers of a version (``"17.4rc1"`` → ``(17, 4)``), trailing zeros cut."""
    found = _RELEASE.match(version.strip().lstrip("vV"))
    numbers = [int(n) for n in found[0].split(".")] if found else [0]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def _allows(op: str, wanted: str, found: str) -> bool:
    have, need = _release(found), _release(wanted.rstrip(".*"))
    if op in ("==", "==="):
        if wanted.endswith(".*"):
            return have[: len(need)] == need
        return have == need
    if op == "!=":
        return have != need
    if op == ">=":
        return have >= need
    if op == ">":
        return have > need
    if op == "<=":
        return have <= need
    if op == "<":
        return have < need
    # ~=X.Y: >= X.Y and == X.*
    return have >= need and have[: max(1, len(need) - 1)] == need[: max(1, len(need) - 1)]


def problems() -> list[str]:
    """One line per dependency that is missing (a core one) or at a version its
    requirement does not allow; empty when all is well or wsroute's metadata is absent
    (a source tree on ``sys.path``, not installed)."""
    try:
        requirements = importlib.metadata.requires(_SELF) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    found: list[str] = []
    for text in requirements:
        match = _REQUIREMENT.match(text)
        if match is None:
            continue
        marker = match["marker"] or ""
        extra_match = _EXTRA.search(marker)
        extra = extra_match["extra"] if extra_match else None
        if extra in _NOT_CHECKED or (marker.strip() and extra is None):
            continue  # another environment's requirement (python_version < ...)
        name, spec = match["name"], match["spec"].strip()
        if extra is not None and _normalise(name) == _SELF:
            continue  # an extra made of other extras ("all")
        wanted = f"{name}{spec}"
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if extra is None:
                found.append(f"{name} is not installed; wsroute needs {wanted}")
            continue
        clauses = [_CLAUSE.match(clause) for clause in spec.split(",") if clause.strip()]
        if not all(c is None or _allows(c["op"], c["version"], version) for c in clauses):
            needs = f"wsroute[{extra}] needs" if extra else "wsroute needs"
            found.append(f"{name} {version} is installed; {needs} {wanted}")
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check() -> int:
    """Print the problems on stderr, one line each: ``EX_CONFIG`` if any, else 0."""
    global _done
    if _done:
        return 0
    _done = True
    found = problems()
    for line in found:
        print(f"wsroute: {line}", file=sys.stderr)
    return EX_CONFIG if found else 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``wsroute`` command: for ``run`` and ``check``, the versions first (so a
    dependency too old to import is named, not met in a traceback), then
    :func:`wsroute.cli.main`."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args if not a.startswith("-")), None)
    if command in ("run", "check") and check():
        return EX_CONFIG
    from .cli import main as cli_main

    return cli_main(args)
