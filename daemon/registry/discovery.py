"""Discovery and resolution: names in the config → loaded, checked plugins.

Call :meth:`Registry.discover` once (the daemon at start and on reload, ``wsroute
check`` and ``wsroute plugins``); nothing is discovered at import time. It reads
the entry points of the groups ``wsroute.handlers``, ``wsroute.codecs`` and
``wsroute.sources`` (the built-ins are registered there too, by the ``wsroute``
distribution) and checks the ``plugin_paths`` folders.

A name resolves, in order, as an entry-point name (``"jsonl"``), then as
``"module:attr"`` where the top-level module is looked for first in the
``plugin_paths`` folders and then on the normal Python path.

Invariant: discovery imports no plugin; a plugin is imported only when a config
names it (or :meth:`Registry.all` lists everything), so a broken third-party
plugin costs nothing until it is used, and every plugin that resolves has passed
its contract check.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from ..exceptions import PluginError
from ..validate import did_you_mean
from .contracts import first_paragraph, looks_like, verify
from .extras import MissingExtra, import_failure
from .imports import PluginImporter
from .info import GROUPS, Kind, PluginInfo
from .metadata import dist_of, entry_points, ep_origin, package_of
from .paths import check_plugin_path

__all__ = ["Registry"]


class Registry:
    """The plugins available to one config: entry points plus ``plugin_paths`` modules.

    Build it with :meth:`discover`; resolve names with :meth:`handler` and
    :meth:`codec`; list everything with :meth:`all`. Loaded plugins are cached
    per registry.
    """

    def __init__(
        self,
        entry_points: Mapping[Kind, Mapping[str, Sequence[importlib.metadata.EntryPoint]]],
        plugin_paths: Sequence[str] = (),
    ) -> None:
        self._eps = {kind: dict(entry_points.get(kind, {})) for kind in GROUPS}
        self._importer = PluginImporter(plugin_paths)
        self._cache: dict[tuple[Kind, str], PluginInfo] = {}

    @classmethod
    def discover(cls, plugin_paths: Sequence[str] = ()) -> Registry:
        """Find the installed entry points and check the ``plugin_paths`` folders.

        Raises :class:`PluginError` for a missing folder or one that others can write.
        Imports nothing: plugins are loaded when :meth:`handler`/:meth:`codec` name them.
        """
        paths = [check_plugin_path(path) for path in plugin_paths]
        return cls({kind: entry_points(group) for kind, group in GROUPS.items()}, paths)

    @property
    def plugin_paths(self) -> tuple[str, ...]:
        """The checked ``plugin_paths`` folders (real paths), in search order."""
        return self._importer.paths

    def names(self, kind: Kind) -> list[str]:
        """The entry-point names of one kind, sorted: what a config can name without ``:``."""
        return sorted(self._eps[kind])

    def handler(self, name: str) -> PluginInfo:
        """Load and check the handler plugin ``name``; :class:`PluginError` if impossible."""
        return self._resolve("handler", name)

    def codec(self, name: str) -> PluginInfo:
        """Load and check the codec plugin ``name``; :class:`PluginError` if impossible."""
        return self._resolve("codec", name)

    def source(self, name: str) -> PluginInfo:
        """Load and check the source plugin ``name``; :class:`PluginError` if impossible."""
        return self._resolve("source", name)

    def _resolve(self, kind: Kind, name: str, *, log: bool = True) -> PluginInfo:
        cached = self._cache.get((kind, name))
        if cached is not None:
            return cached
        if name in self._eps[kind]:
            info = self._load_entry_point(kind, name)
        elif ":" in name:
            info = self._load_target(kind, name)
        else:
            names = self.names(kind)
            raise PluginError(
                f'unknown {kind} plugin "{name}"{did_you_mean(name, names)}; '
                f"installed: {', '.join(names) or '(none)'}"
            )
        self._cache[(kind, name)] = info
        if log:
            structlog.get_logger().info(
                "plugin_loaded",
                plugin=info.name,
                kind=kind,
                origin=info.origin,
                target=info.target,
                package=info.package,
                version=info.version,
            )
        return info

    def _load_entry_point(self, kind: Kind, name: str) -> PluginInfo:
        eps = self._eps[kind][name]
        if len(eps) > 1:
            registered = "; ".join(f"{ep_origin(ep)} ({ep.value})" for ep in eps)
            raise PluginError(
                f'{kind} plugin "{name}" is registered by more than one distribution: '
                f"{registered}; uninstall one of them"
            )
        ep = eps[0]
        origin = ep_origin(ep)
        where = f'{kind} plugin "{name}" ({ep.value}, {origin})'
        try:
            obj = ep.load()
        except Exception as exc:
            raise import_failure(where, exc) from exc
        dist, version = dist_of(ep)
        return PluginInfo(
            name=name,
            kind=kind,
            origin=origin,
            target=f"{ep.module}:{ep.attr}",
            obj=obj,
            options=verify(kind, name, obj),
            doc=first_paragraph(obj),
            package=dist,
            version=version,
        )

    def _load_target(self, kind: Kind, name: str) -> PluginInfo:
        modname, _, attr = name.partition(":")
        if not attr or not all(part.isidentifier() for part in modname.split(".")):
            raise PluginError(
                f'{kind} plugin "{name}": expected an installed plugin name or '
                f'"module:attr" like "mypackage.handlers:MyHandler"'
            )
        module, origin = self._importer.import_module(modname)
        obj: Any = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                hint = did_you_mean(part, [n for n in dir(obj) if not n.startswith("_")])
                raise PluginError(
                    f'{kind} plugin "{name}": {modname} ({origin}) has no attribute "{attr}"{hint}'
                ) from None
        package, version = package_of(modname)
        if origin.startswith("path "):
            version = getattr(module, "__version__", None)
            package = modname
        return PluginInfo(
            name=name,
            kind=kind,
            origin=origin,
            target=name,
            obj=obj,
            options=verify(kind, name, obj),
            doc=first_paragraph(obj),
            package=package,
            version=version if isinstance(version, str) else None,
        )

    def all(self) -> list[PluginInfo]:
        """Every plugin found, loaded and checked, for ``wsroute plugins`` (and ``check``).

        Entry points first (handlers, then codecs), then the classes of each
        ``plugin_paths`` module that fit the handler or codec contract, named
        ``module:Class``. A plugin that fails to load is returned with ``error``
        set instead of raising; a built-in whose client library is missing also
        has ``missing_extra``, the extra that installs it.
        """
        infos: list[PluginInfo] = []
        for kind in GROUPS:
            for name in self.names(kind):
                try:
                    infos.append(self._resolve(kind, name, log=False))
                except PluginError as exc:
                    ep = self._eps[kind][name][0]
                    dist, version = dist_of(ep)
                    origin = ep_origin(ep)
                    # A built-in whose optional client library is missing is not installed,
                    # not broken: the listing says which extra installs it.
                    missing = (
                        exc.extra
                        if isinstance(exc, MissingExtra) and origin == "built-in"
                        else None
                    )
                    infos.append(
                        PluginInfo(
                            name=name,
                            kind=kind,
                            origin=origin,
                            target=f"{ep.module}:{ep.attr}",
                            error=str(exc),
                            package=dist,
                            version=version,
                            missing_extra=missing,
                        )
                    )
        for modname, file in self._importer.path_modules():
            try:
                module, _origin = self._importer.import_module(modname)
            except PluginError as exc:
                infos.append(
                    PluginInfo(
                        name=modname,
                        kind="handler",
                        origin=f"path {file}",
                        target=modname,
                        error=str(exc),
                    )
                )
                continue
            for attr, value in sorted(vars(module).items()):
                if attr.startswith("_") or not inspect.isclass(value):
                    continue
                if value.__module__ != module.__name__:
                    continue
                kind_of = looks_like(value)
                if kind_of is None:
                    continue
                target = f"{modname}:{attr}"
                try:
                    infos.append(self._resolve(kind_of, target, log=False))
                except PluginError as exc:
                    infos.append(
                        PluginInfo(
                            name=target,
                            kind=kind_of,
                            origin=f"path {file}",
                            target=target,
                            error=str(exc),
                        )
                    )
        return infos
