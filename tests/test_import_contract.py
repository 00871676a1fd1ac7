"""The public plugin API is what the built-in plugins use: checked on their imports.

Every module under ``plugins/`` (``wsroute.plugins.*``) may import from wsroute only
the top-level package, the public modules below, and the non-underscore modules of
``wsroute.plugins`` (a subpackage such as ``wsroute.plugins.redis`` also its own
modules); never an underscore name. The core (``daemon/``, ``wsroute.*``) never
imports the plugins, and the two WebSocket transports never import each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "daemon"
PLUGINS = ROOT / "plugins"

#: The public modules of the plugin API besides the top-level package (docs/plugins.md).
PUBLIC_MODULES = frozenset(
    {
        "wsroute.records",
        "wsroute.tls",
        "wsroute.net",
        "wsroute.outage",
        "wsroute.process",
        "wsroute.testing",
    }
)


def module_name(path: Path) -> str:
    """``daemon/tls.py`` → ``wsroute.tls``; ``plugins/a/b.py`` → ``wsroute.plugins.a.b``."""
    if path.is_relative_to(PLUGINS):
        parts = ["wsroute", "plugins", *path.relative_to(PLUGINS).with_suffix("").parts]
    else:
        parts = ["wsroute", *path.relative_to(CORE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> Iterator[tuple[str, str | None, int]]:
    """Each ``(module, name, line)`` the file imports, relative imports resolved;
    ``name`` is ``None`` for ``import module``. Imports inside functions count too."""
    yield from source_imports(path.read_text(), module_name(path), path.name == "__init__.py")


def source_imports(
    text: str, module: str, is_package: bool = False
) -> Iterator[tuple[str, str | None, int]]:
    """:func:`imports` of the source ``text`` of ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                yield source, alias.name, node.lineno


def plugin_files() -> list[Path]:
    return sorted(p for p in PLUGINS.rglob("*.py") if "__pycache__" not in p.parts)


def core_files() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts)


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def plugin_violations(path: Path) -> list[str]:
    label = str(path.relative_to(ROOT))
    return violations(path.read_text(), module_name(path), label, path.name == "__init__.py")


def violations(text: str, own: str, label: str, is_package: bool = False) -> list[str]:
    """What the plugin module ``own`` (source ``text``) imports against the contract."""
    # A module of a subpackage (wsroute.plugins.redis.x) may use its package's modules.
    parts = own.split(".")
    subpackage = ".".join(parts[:3]) if len(parts) > 3 or is_package else None
    problems = []
    for source, name, line in source_imports(text, own, is_package):
        if source != "wsroute" and not source.startswith("wsroute."):
            continue
        where = f"{label}:{line}"
        target = source
        if source in ("wsroute.plugins", subpackage) and name is not None:
            target = f"{source}.{name}"  # from wsroute.plugins import sinks: a module
        if subpackage is not None and (target == subpackage or target.startswith(subpackage + ".")):
            continue
        if target.startswith("wsroute.plugins."):
            if any(part.startswith("_") for part in target.split(".")[2:]):
                problems.append(f"{where}: imports private plugin module {target}")
            continue
        if target != "wsroute" and target not in PUBLIC_MODULES:
            problems.append(f"{where}: imports internal module {target}")
        elif name is not None and name.startswith("_"):
            problems.append(f"{where}: imports private name {name}")
    return problems


@pytest.mark.parametrize("path", plugin_files(), ids=_ids(plugin_files()))
def test_plugins_use_only_the_public_api(path: Path) -> None:
    assert plugin_violations(path) == []


@pytest.mark.parametrize("path", core_files(), ids=_ids(core_files()))
def test_the_core_never_imports_the_plugins(path: Path) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {source}"
        for source, name, line in imports(path)
        if source == "wsroute.plugins" or source.startswith("wsroute.plugins.")
    ]
    assert found == []


def test_the_checker_sees_violations() -> None:
    text = (
        "from wsroute.config import ConnectionSection\n"
        "from wsroute import _private\n"
        "from wsroute.plugins._sinks import ssl_context\n"
        "from wsroute.records import encode_record\n"
        "from wsroute.plugins import sinks\n"
        "from . import _helpers\n"
        "from wsroute import Message\n"
    )
    assert violations(text, "wsroute.plugins.probe", "probe") == [
        "probe:1: imports internal module wsroute.config",
        "probe:2: imports private name _private",
        "probe:3: imports private plugin module wsroute.plugins._sinks",
        "probe:6: imports private plugin module wsroute.plugins._helpers",
    ]
    # Inside a subpackage, its own modules are fair game, private or not.
    inside = "from ._shared import x\nfrom wsroute.plugins.redis import _y\n"
    assert violations(inside, "wsroute.plugins.redis.sink", "sink") == []


#: The entry points that build a daemon: the only modules that may import the Service.
#: Observers read it through ``wsroute.view.DaemonView``; plugins through their contexts.
SERVICE_BUILDERS = frozenset(
    {"wsroute.cli", "wsroute.demo", "wsroute.replay", "wsroute.testing.daemon"}
)


def service_imports(text: str, module: str, is_package: bool = False) -> list[int]:
    """The lines where ``module`` (source ``text``) imports ``wsroute.service``;
    imports under ``TYPE_CHECKING`` or inside functions count too."""
    return [
        line
        for source, name, line in source_imports(text, module, is_package)
        if source == "wsroute.service" or (source == "wsroute" and name == "service")
    ]


def test_only_the_entry_points_that_build_a_daemon_import_the_service() -> None:
    importers = {}
    for path in core_files() + plugin_files():
        own = module_name(path)
        lines = service_imports(path.read_text(), own, path.name == "__init__.py")
        if lines and own != "wsroute.service":
            importers[own] = lines
    assert set(importers) <= SERVICE_BUILDERS, importers
    assert len(importers) <= 4


def test_the_service_check_sees_every_form_of_import() -> None:
    text = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from ..service import Service\n"
        "def build():\n"
        "    from wsroute import service\n"
        "import wsroute.service\n"
        "from ..view import DaemonView\n"
    )
    assert sorted(service_imports(text, "wsroute.api.probe")) == [3, 5, 6]
