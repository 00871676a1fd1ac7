"""wsroute uses its dependencies' public names only, and declares every package it imports.

An AST walk over ``daemon/`` and ``plugins/`` (the installed package) reports:

- an import of a package no requirement of wsroute installs (core or a non-dev extra);
- an import of, or an attribute access into, a module by a name outside its public
  surface: a module path with a ``_part``, a ``_name``, or (for a dependency's module)
  a name missing from the module's ``__all__`` and from :data:`DOCUMENTED`;
- ``x._name`` (or ``getattr(x, "_name")``) where wsroute's own code defines no
  ``_name``: another library's private attribute;
- a name the dependencies have but do not document (:data:`UNDOCUMENTED`), used as
  an attribute or defined in a subclass of a dependency's class;
- a method of such a subclass that overrides a ``_private`` one of its base.

The standard library counts as documented for every name without a leading
underscore (and within ``__all__`` where a module has one). Each entry of
:data:`DOCUMENTED` names where the library documents it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from conftest import REPO

ROOTS = ("daemon", "plugins")

#: (module, name) → where the library documents it, for names a dependency's
#: module does not list in ``__all__``.
DOCUMENTED: dict[tuple[str, str], str] = {
    **{
        ("structlog.typing", name): "structlog docs: API Reference, structlog.typing"
        for name in ("EventDict", "FilteringBoundLogger", "Processor", "WrappedLogger")
    },
    ("structlog.processors", "ExceptionRenderer"): "structlog docs: API Reference, "
    "structlog.processors",
    ("rich.console", "RenderableType"): "Rich docs: Reference, rich.console",
}

#: A dependency's submodules without ``__all__`` (one with ``__all__`` declares its
#: public names itself; some gained it after wsroute's floor) → where the library
#: documents the module.
MODULES: dict[str, str] = {
    "anyio.abc": "AnyIO docs: API reference, Abstract base classes",
    "anyio.from_thread": "AnyIO docs: API reference, Running asynchronous code from threads",
    "anyio.lowlevel": "AnyIO docs: API reference, Low level operations",
    "anyio.to_thread": "AnyIO docs: API reference, Running code in worker threads",
    "msgspec.json": "msgspec docs: API Docs, JSON",
    "msgspec.msgpack": "msgspec docs: API Docs, MessagePack",
    "structlog.typing": "structlog docs: API Reference, structlog.typing",
    "structlog.contextvars": "structlog docs: API Reference, structlog.contextvars",
    "redis.exceptions": "redis-py docs: Exceptions",
    "redis.backoff": "redis-py docs: Retry Helpers",
    "redis.asyncio.retry": "redis-py docs: Retry Helpers",
    "nats.errors": "nats.py docs: Modules, nats.errors",
    "nats.aio.client": "nats.py docs: Modules, nats.aio.client",
    "nats.aio.msg": "nats.py docs: Modules, nats.aio.msg",
    "nats.js.api": "nats.py docs: Modules, JetStream (nats.js.api)",
    "nats.js.errors": "nats.py docs: Modules, JetStream (nats.js.errors)",
    "rich.box": "Rich docs: Reference, rich.box",
    "rich.console": "Rich docs: Reference, rich.console",
    "rich.live": "Rich docs: Reference, rich.live",
    "rich.table": "Rich docs: Reference, rich.table",
    "rich.text": "Rich docs: Reference, rich.text",
    "prometheus_client.registry": "prometheus_client docs: Custom Collectors",
}

#: Underscore names the standard library documents as public.
PUBLIC_UNDERSCORE: dict[str, str] = dict.fromkeys(
    ("_replace", "_asdict", "_fields", "_make"),
    "Python docs: collections.namedtuple (urllib.parse's results are named tuples)",
)

#: Names dependencies have but do not document: never used, never overridden.
UNDOCUMENTED: dict[str, str] = {
    "gi_yieldfrom": "CPython: a generator's internals (inspect documents only getgeneratorstate)",
    "gi_code": "CPython: a generator's internals",
    "gi_frame": "CPython: a generator's internals",
    "process_event": "websockets: Protocol's event hook, not in the API reference",
    "set_connection_exc": "websockets: not in the API reference",
    "send_context": "websockets: asyncio Connection internals",
    "connection_lost_waiter": "websockets: asyncio Connection internals",
    "recv_messages": "websockets: asyncio Connection internals",
}

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def declared_modules() -> frozenset[str]:
    """Top-level modules of the distributions wsroute requires (core and every extra
    but ``dev``), as installed here."""
    wanted: set[str] = set()
    for requirement in importlib.metadata.requires("wsroute") or []:
        name_match = _REQUIREMENT.match(requirement)
        extra = _EXTRA.search(requirement)
        if name_match is None or (extra is not None and extra[1] == "dev"):
            continue
        wanted.add(_normalise(name_match[1]))
    modules = {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if any(_normalise(dist) in wanted for dist in dists)
    }
    return frozenset(modules)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@cache
def _module(path: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(path)
    except ImportError:
        return None


Report = Callable[[ast.AST, str], None]


class Checker:
    """The rules of the module's docstring, for one tree of sources."""

    def __init__(self, own_names: frozenset[str], declared: frozenset[str]) -> None:
        self.own = own_names
        self.declared = declared

    def check_source(self, source: str, path: str) -> list[Finding]:
        tree = ast.parse(source, path)
        found: list[Finding] = []
        aliases: dict[str, str] = {}  # local name → dotted path of a dependency's name

        def report(node: ast.AST, what: str) -> None:
            found.append(Finding(path, getattr(node, "lineno", 0), what))

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if self._foreign(alias.name):
                        for problem in self._module_problems(alias.name):
                            report(node, problem)
                        local = alias.asname or alias.name.split(".")[0]
                        aliases[local] = alias.name if alias.asname else local
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if not self._foreign(node.module):
                    continue
                for problem in self._module_problems(node.module):
                    report(node, problem)
                for alias in node.names:
                    problem = self._member_problem(node.module, alias.name)
                    if problem:
                        report(node, problem)
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        inner = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                if id(node) not in inner:  # a chain a.b.c is checked once, whole
                    self._attribute(node, aliases, report)
            elif isinstance(node, ast.Call) and _constant_attribute(node) is not None:
                name = _constant_attribute(node)
                assert name is not None
                self._name_used(node, name, report)
            elif isinstance(node, ast.ClassDef):
                self._subclass(node, aliases, report)
        return found

    # -- the rules -----------------------------------------------------------

    def _foreign(self, module: str) -> bool:
        top = module.split(".")[0]
        return top not in ("wsroute", "__future__")

    def _stdlib(self, module: str) -> bool:
        return module.split(".")[0] in sys.stdlib_module_names

    def _module_problems(self, module: str) -> Iterator[str]:
        if any(_is_private(part) for part in module.split(".")):
            yield f"imports the private module {module}"
            return
        if self._stdlib(module):
            return
        top = module.split(".")[0]
        if top not in self.declared:
            yield f"imports {module}: no requirement of wsroute installs {top!r}"
        elif (
            "." in module
            and module not in MODULES
            and getattr(_module(module), "__all__", None) is None
        ):
            yield f"imports {module}: no __all__, and not a documented module (MODULES)"

    def _member_problem(self, module: str, name: str) -> str | None:
        where = f"{module}.{name}"
        if _is_private(name):
            return f"uses the private name {where}"
        if self._stdlib(module) or (module, name) in DOCUMENTED or where in MODULES:
            return None
        found = _module(module)
        if found is None:
            return None  # not installed here: the declared-package rule speaks for it
        listed = getattr(found, "__all__", None)
        if listed is not None:
            if name in listed:
                return None
            return f"uses {where}: not in {module}.__all__ nor DOCUMENTED"
        if _defined_in(found, name):
            return None
        return f"uses {where}: {module} has no __all__ and only imports it (DOCUMENTED?)"

    def _attribute(self, node: ast.Attribute, aliases: dict[str, str], report: Report) -> None:
        chain: list[str] = []
        base: ast.expr = node
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        chain.reverse()
        path = aliases.get(base.id) if isinstance(base, ast.Name) else None
        for attr in chain:
            if path is not None and _module(path) is not None:
                problem = self._member_problem(path, attr)
                if problem is None and _module(f"{path}.{attr}") is not None:
                    problem = next(self._module_problems(f"{path}.{attr}"), None)
                path = f"{path}.{attr}"
            else:  # an object's attribute: of a dependency's class, or of wsroute's own
                problem = self._attr_problem(attr)
                path = None
            if problem:
                report(node, problem)

    def _attr_problem(self, name: str) -> str | None:
        if _is_private(name) and name not in self.own and name not in PUBLIC_UNDERSCORE:
            return f"uses the private attribute .{name} of another library's object"
        if name in UNDOCUMENTED and name not in self.own:
            return f"uses .{name}: {UNDOCUMENTED[name]}"
        return None

    def _name_used(self, node: ast.AST, name: str, report: Report) -> None:
        problem = self._attr_problem(name)
        if problem:
            report(node, problem)

    def _subclass(self, node: ast.ClassDef, aliases: dict[str, str], report: Report) -> None:
        bases = [_dotted(base, aliases) for base in node.bases]
        foreign = [b for b in bases if b is not None]
        if not foreign:
            return
        for item in node.body:
            if not isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if item.name in UNDOCUMENTED:
                report(item, f"overrides {item.name}: {UNDOCUMENTED[item.name]}")
            elif _is_private(item.name) and any(hasattr(_resolve(b), item.name) for b in foreign):
                report(item, f"overrides the private method {item.name} of {foreign[0]}")


def _defined_in(module: types.ModuleType, name: str) -> bool:
    """For a module without ``__all__`` (PEP 8: then its own non-underscore names are
    its interface, imported ones are not): ``name`` is defined by the module itself, by
    a private module of its package (``anyio._core`` behind ``anyio``), or is a
    submodule."""
    value = getattr(module, name, None)
    if value is None:
        return False
    if isinstance(value, types.ModuleType):
        return value.__name__ == f"{module.__name__}.{name}"
    home = getattr(value, "__module__", None)
    if not isinstance(home, str):
        return True  # a constant: no other home
    top = module.__name__.split(".")[0]
    return home == module.__name__ or (
        home.split(".")[0] == top and any(_is_private(part) for part in home.split("."))
    )


def _constant_attribute(node: ast.Call) -> str | None:
    """The attribute name of ``getattr/hasattr/setattr/delattr(x, "name", ...)``."""
    if (
        isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    ):
        return node.args[1].value
    return None


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in aliases:
        return ".".join([aliases[node.id], *reversed(parts)])
    return None


def _resolve(dotted: str) -> object:
    module = dotted.rpartition(".")[0]
    while module:
        found = _module(module)
        if found is not None:
            value: object = found
            for part in dotted[len(module) + 1 :].split("."):
                value = getattr(value, part, None)
            return value
        module = module.rpartition(".")[0]
    return None


def own_names(paths: list[Path]) -> frozenset[str]:
    """The attribute names wsroute's own code defines: ``x.name = ...``, a class's
    methods and attributes, ``__slots__`` entries."""
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                        names.add(item.name)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.add(item.target.id)
                    elif isinstance(item, ast.Assign):
                        names.update(t.id for t in item.targets if isinstance(t, ast.Name))
                        if any(
                            isinstance(t, ast.Name) and t.id == "__slots__" for t in item.targets
                        ):
                            names.update(
                                c.value
                                for c in ast.walk(item.value)
                                if isinstance(c, ast.Constant) and isinstance(c.value, str)
                            )
    return frozenset(names)


def sources() -> list[Path]:
    return sorted(p for root in ROOTS for p in (REPO / root).rglob("*.py"))


def check_tree() -> list[Finding]:
    paths = sources()
    checker = Checker(own_names(paths), declared_modules())
    found: list[Finding] = []
    for path in paths:
        found += checker.check_source(path.read_text(), str(path.relative_to(REPO)))
    return found


def test_wsroute_uses_only_public_names_of_declared_packages() -> None:
    found = check_tree()
    assert not found, "\n".join(map(str, found))


PLANTED = """
import python_socks
from redis._parsers.hiredis import NOT_ENOUGH_DATA
from websockets.asyncio.messages import MAX_FRAGMENTS
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection


class Quick(ClientConnection):
    def process_event(self, event):
        return event


async def read(connection):
    parser = connection._parser
    gets = getattr(parser, "_reader").gets
    waiter = connection.connection_lost_waiter
    return aioredis.connection._ENCODER, gets, waiter, MAX_FRAGMENTS, NOT_ENOUGH_DATA
"""


def test_a_planted_private_name_fails_the_check() -> None:
    checker = Checker(own_names(sources()), declared_modules())
    found = {(f.line, f.what) for f in checker.check_source(PLANTED, "planted.py")}
    expected = {
        (2, "no requirement of wsroute installs 'python_socks'"),
        (3, "imports the private module redis._parsers.hiredis"),
        (4, "uses websockets.asyncio.messages.MAX_FRAGMENTS: not in"),
        (10, "overrides process_event"),
        (15, "uses the private attribute ._parser"),
        (16, "uses the private attribute ._reader"),
        (17, "uses .connection_lost_waiter"),
        (18, "_ENCODER"),
    }
    for line, fragment in expected:
        assert any(n == line and fragment in what for n, what in found), (line, fragment, found)
    # ... and nothing else: the public names beside them pass.
    assert {n for n, _ in found} == {line for line, _ in expected}, found


@pytest.mark.parametrize("module", ["redis.asyncio", "websockets.asyncio.client"])
def test_a_public_import_passes(module: str) -> None:
    checker = Checker(own_names(sources()), declared_modules())
    assert checker.check_source(f"import {module}\n", "public.py") == []
