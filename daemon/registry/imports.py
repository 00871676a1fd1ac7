"""Importing plugin modules by name: from the ``plugin_paths`` folders first, then ``sys.path``.

A top-level module found in a ``plugin_paths`` folder is loaded under its own
name, after :mod:`.paths` checked every file it is read from; its submodules are
checked the same way before each is imported.

Invariant: a plugin-path module never replaces a module that is already imported
under the same name, and a failed import leaves no half-initialised module in
``sys.modules``; every failure is a :class:`PluginError`.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from ..exceptions import PluginError
from .extras import import_failure
from .paths import check_module_files

__all__ = ["PluginImporter"]


class PluginImporter:
    """Imports modules for one registry, searching its checked ``plugin_paths`` first."""

    def __init__(self, plugin_paths: Sequence[str] = ()) -> None:
        self.paths = tuple(plugin_paths)

    def _find_in_paths(self, top: str) -> importlib.machinery.ModuleSpec | None:
        if not self.paths:
            return None
        return importlib.machinery.PathFinder.find_spec(top, list(self.paths))

    def import_module(self, modname: str) -> tuple[ModuleType, str]:
        """Import ``modname``, from the plugin paths first; return it and its origin text."""
        top = modname.partition(".")[0]
        spec = self._find_in_paths(top)
        if spec is None:
            try:
                return importlib.import_module(modname), f"module {modname}"
            except ModuleNotFoundError as exc:
                if exc.name and (modname == exc.name or modname.startswith(exc.name + ".")):
                    where = " in plugin_paths or" if self.paths else ""
                    raise PluginError(
                        f'no module named "{exc.name}"{where} on the Python path'
                    ) from exc
                raise import_failure(f'module "{modname}"', exc) from exc
            except Exception as exc:
                raise import_failure(f'module "{modname}"', exc) from exc
        module = self._load_from_path(top, spec)
        parts = modname.split(".")
        for depth in range(2, len(parts) + 1):
            sub = ".".join(parts[:depth])
            try:
                sub_spec = importlib.util.find_spec(sub)
            except Exception as exc:
                raise import_failure(f'plugin module "{sub}"', exc) from exc
            if sub_spec is None:
                raise PluginError(f'no module named "{sub}" in plugin package "{top}"')
            check_module_files(sub_spec)
            try:
                module = importlib.import_module(sub)
            except Exception as exc:
                raise import_failure(f'plugin module "{sub}"', exc) from exc
        return module, f"path {module.__file__ or spec.origin or top}"

    def _load_from_path(self, top: str, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        """Load a top-level module found in the plugin paths under its own name."""
        location = os.path.realpath(spec.origin) if spec.origin else None
        existing = sys.modules.get(top)
        if existing is not None:
            existing_file = getattr(existing, "__file__", None)
            if location and existing_file and os.path.realpath(existing_file) == location:
                return existing
            raise PluginError(
                f'plugin module "{top}" ({location or spec.name}) has the name of a module '
                f"that is already imported ({existing_file or 'built in'}); rename it"
            )
        check_module_files(spec)
        if spec.loader is None:
            raise PluginError(f'plugin module "{top}" ({location}) cannot be loaded')
        module = importlib.util.module_from_spec(spec)
        sys.modules[top] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(top, None)
            if isinstance(exc, Exception):
                raise import_failure(f'plugin module "{top}" ({location})', exc) from exc
            raise
        return module

    def path_modules(self) -> list[tuple[str, str]]:
        """``(module name, file)`` of every module and package in the plugin paths."""
        found: dict[str, str] = {}
        for folder in self.paths:
            try:
                entries = sorted(os.listdir(folder))
            except OSError:
                continue
            for entry in entries:
                full = os.path.join(folder, entry)
                if entry.endswith(".py") and os.path.isfile(full):
                    modname = entry[:-3]
                elif os.path.isfile(os.path.join(full, "__init__.py")):
                    modname = entry
                else:
                    continue
                # The first folder wins, as it does when resolving a name.
                if modname.isidentifier() and modname not in found:
                    found[modname] = full
        return list(found.items())
