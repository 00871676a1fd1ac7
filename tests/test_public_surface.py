"""The public surface is explicit: what ``wsroute`` exports, which modules are public,
and that the author's docs name each of them.

docs/plugins.md holds the two lists (public modules, internal modules), the plugin
API's import list, and the test kit; docs/library.md the library face. A new module,
export or method fails here until it is put in one of them.
"""

from __future__ import annotations

import dataclasses
import importlib
import re

from test_import_contract import PUBLIC_MODULES

import wsroute
import wsroute.sync
import wsroute.testing
from wsroute.client import Client

from conftest import REPO

PLUGINS_MD = (REPO / "docs" / "plugins.md").read_text()
LIBRARY_MD = (REPO / "docs" / "library.md").read_text()
# The library face, documented in library.md (plugins.md only points there).
LIBRARY_NAMES = {"connect", "Client", "ClientOptions", "ConnectOptions"}


def _modules() -> set[str]:
    """Every module of the installed package: daemon/ is wsroute, plugins/ wsroute.plugins."""
    found = set()
    for root, prefix in ((REPO / "daemon", "wsroute"), (REPO / "plugins", "wsroute.plugins")):
        for path in root.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            parts = [prefix, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found.add(".".join(parts))
    return found - {"wsroute"}  # the package itself: its names are __all__


def _public_modules() -> set[str]:
    """The table of public modules at the top of plugins.md, and wsroute.sync (library.md)."""
    table = re.findall(r"^\| `(wsroute(?:\.\w+)+)` \|", PLUGINS_MD, re.MULTILINE)
    assert "`wsroute.sync`" in LIBRARY_MD
    return {*table, "wsroute.sync"}


def _internal_modules() -> set[str]:
    paragraph = PLUGINS_MD[PLUGINS_MD.index("Internal modules:") :]
    paragraph = paragraph[: paragraph.index("\n\n")]
    return set(re.findall(r"`(wsroute(?:\.\w+)*)`", paragraph))


def _within(module: str, listed: set[str]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in listed)


def test_dir_is_all_and_nothing_else() -> None:
    importlib.import_module("wsroute.config")  # submodules imported meanwhile stay hidden
    shown = {name for name in dir(wsroute) if not name.startswith("__")}
    assert shown == {name for name in wsroute.__all__ if not name.startswith("__")}
    assert "__version__" in wsroute.__all__
    for name in wsroute.__all__:
        assert getattr(wsroute, name) is not None


def test_every_module_is_listed_public_or_internal() -> None:
    public, internal = _public_modules(), _internal_modules()
    assert not public & internal
    assert public >= PUBLIC_MODULES  # what the built-in plugins may import is documented
    unlisted = sorted(
        module
        for module in _modules()
        if not _within(module, public) and not _within(module, internal)
    )
    assert unlisted == [], (
        f"{unlisted}: list each under 'Internal modules' in docs/plugins.md (or, if it is "
        "public API, in the table of public modules and wsroute's docstring)"
    )
    assert (public | internal) - {"wsroute.plugins"} <= _modules()  # no stale entry


def test_the_package_docstring_names_both_faces_and_the_public_modules() -> None:
    doc = wsroute.__doc__ or ""
    assert "docs/plugins.md" in doc
    assert "docs/library.md" in doc
    for module in _public_modules():
        assert f"``{module}``" in doc, module


def _import_list() -> set[str]:
    """The names of plugins.md's first ``from wsroute import (...)``."""
    block = re.search(r"```python\nfrom wsroute import \((.*?)\)\n```", PLUGINS_MD, re.DOTALL)
    assert block is not None
    return set(re.findall(r"^\s+(\w+),", block.group(1), re.MULTILINE))


def test_every_name_plugins_md_uses_is_in_its_import_list() -> None:
    listed = _import_list()
    used: set[str] = set()
    for code in re.findall(r"```python\n(.*?)```", PLUGINS_MD, re.DOTALL):
        code = re.sub(r"#[^\n]*", "", code)  # comments, and the parentheses in them
        for pattern in (r"from wsroute import \(([^)]*)\)", r"from wsroute import ([^(\n]+)$"):
            for names in re.findall(pattern, code, re.MULTILINE):
                used.update(re.findall(r"\w+", names))
    used.update(re.findall(r"\w+", re.sub(r"#[^\n]*", "", names)))
    used.update(re.findall(r"\bwsroute\.([A-Z]\w*|[a-z_]+(?=\())", PLUGINS_MD))
    public = set(wsroute.__all__)
    assert sorted(name for name in used & public if name not in listed | LIBRARY_NAMES) == []
    assert listed <= public


def test_all_is_the_import_list_the_other_errors_and_the_library_face() -> None:
    # As plugins.md says under its import list.
    others = {"WsrouteError", "PluginError", "CodecError", "ConnectionClosed", "__version__"}
    assert set(wsroute.__all__) == _import_list() | others | LIBRARY_NAMES
    for name in others - {"__version__"}:
        assert f"`{name}`" in PLUGINS_MD


def test_every_export_is_documented() -> None:
    docs = PLUGINS_MD + LIBRARY_MD
    undocumented = [
        name
        for name in wsroute.__all__
        if not name.startswith("__")
        and name not in _import_list()
        and f"`{name}`" not in docs
        and f"wsroute.{name}" not in docs
    ]
    assert undocumented == []
    kit = [name for name in wsroute.testing.__all__ if name not in PLUGINS_MD]
    assert kit == []


def test_the_test_kits_results_and_the_clients_methods_are_documented() -> None:
    delivery = [f.name for f in dataclasses.fields(wsroute.testing.Delivery)]
    delivery += [n for n in vars(wsroute.testing.Delivery) if not n.startswith("_")]
    assert [name for name in delivery if f"`{name}`" not in PLUGINS_MD] == []
    for cls in (Client, wsroute.sync.SyncClient):
        public = [name for name in vars(cls) if not name.startswith("_")]
        missing = [name for name in public if not re.search(rf"\b{name}\b", LIBRARY_MD)]
        assert missing == [], cls.__name__


def test_the_readme_names_no_internal_module_as_api() -> None:
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"`(wsroute(?:\.[a-z_]+)+)`", readme))
    internal = _internal_modules() - {"wsroute.plugins"}  # where the built-ins install: a fact
    assert sorted(m for m in named if _within(m, internal)) == []
