"""Plugin discovery and loading: names in the config → checked handler and codec classes.

Call :meth:`Registry.discover` once (the daemon at start and on reload, ``wsroute
check`` and ``wsroute plugins``); nothing is discovered at import time. It reads
the entry points of the groups ``wsroute.handlers`` and ``wsroute.codecs`` (the
built-ins are registered there too, by the ``wsroute`` distribution) and checks
the ``plugin_paths`` folders. Entry points are imported only when a config names
them, so a broken third-party plugin costs nothing until it is used.

A name resolves, in order, as an entry-point name (``"jsonl"``), then as
``"module:attr"`` where the top-level module is looked for first in the
``plugin_paths`` folders and then on the normal Python path.

Every plugin is checked against the contract when it is loaded (as pluggy's
``_verify_hook`` does for hook implementations), so a plugin that does not fit
fails ``wsroute check`` with an error naming the plugin and the problem, not the
first message it should have handled.

Plugins run with the daemon's rights, so a ``plugin_paths`` folder, and each
module loaded from it, must be owned by root or the daemon's user and writable
by nobody else (sshd's StrictModes rule).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import os
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any, Literal

import structlog

from .config import DELIVERY_KEYS
from .exceptions import ConfigIssue, PluginError
from .logging import register_secrets
from .plugin import Codec
from .validate import INVALID, convert, did_you_mean, field_docs, join_path, secret_values

__all__ = [
    "GROUPS",
    "Kind",
    "PluginInfo",
    "Registry",
    "build_options",
    "check_plugin_path",
    "create_codec",
    "create_handler",
    "create_source",
    "describe",
    "format_plugins",
    "plugin_info",
]

Kind = Literal["handler", "codec", "source"]

#: The entry-point group of each plugin kind.
GROUPS: dict[Kind, str] = {
    "handler": "wsroute.handlers",
    "codec": "wsroute.codecs",
    "source": "wsroute.sources",
}

_SELF_DIST = "wsroute"


@dataclass(frozen=True)
class PluginInfo:
    """A plugin found by the registry: where it came from, and the loaded object.

    ``obj`` is the class (or factory) and ``options`` its ``Options`` dataclass
    (``None`` when it takes no options). A plugin that failed to load (only
    returned by :meth:`Registry.all`) has ``obj=None`` and the reason in ``error``.
    """

    name: str
    kind: Kind
    origin: str
    """``built-in``, ``<distribution> <version>``, ``path <file>`` or ``module <name>``."""
    target: str
    """``module:attr``."""
    obj: Any = None
    options: type | None = None
    doc: str = ""
    """The first paragraph of the plugin's docstring."""
    error: str | None = None
    package: str | None = None
    """The distribution (or module) that provides the plugin, for the load log line."""
    version: str | None = None


# --------------------------------------------------------------------------- security


def _check_secure(path: str, what: str) -> None:
    """Refuse ``path`` unless only root or our own user can change it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PluginError(f'{what} "{path}" does not exist') from None
    except OSError as exc:
        raise PluginError(f'{what} "{path}": {exc.strerror}') from exc
    uid = os.getuid()
    problems = []
    if st.st_uid not in (0, uid):
        problems.append(f"it is owned by uid {st.st_uid}")
    writers = [
        who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit
    ]
    if writers:
        mode = stat.S_IMODE(st.st_mode)
        problems.append(f"it is writable by {' and '.join(writers)} (mode {mode:04o})")
    if problems:
        owners = "root" if uid == 0 else f"root or uid {uid} (the daemon's user)"
        raise PluginError(
            f'refusing {what} "{path}": {"; ".join(problems)}. Plugins run with the '
            f"daemon's rights, so only {owners} may own it and nobody else may write it "
            f"(fix: chown, chmod go-w)"
        )


def check_plugin_path(path: str) -> str:
    """Check one ``plugin_paths`` folder; return its real path or raise :class:`PluginError`.

    Its ``__pycache__`` is checked too: a planted ``.pyc`` is as good as a planted module.
    """
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise PluginError(f'plugin path "{path}" does not exist')
    if not os.path.isdir(real):
        raise PluginError(f'plugin path "{path}" is not a folder')
    _check_secure(real, "plugin path")
    cache_dir = os.path.join(real, "__pycache__")
    if os.path.isdir(cache_dir):
        _check_secure(cache_dir, "plugin cache folder")
    return real


def _check_module_files(spec: importlib.machinery.ModuleSpec) -> None:
    """Check the files a plugin-path module is loaded from (and their compiled copies)."""
    if spec.origin and os.path.isfile(spec.origin):
        origin = os.path.realpath(spec.origin)
        _check_secure(origin, "plugin module")
        if spec.submodule_search_locations:
            _check_secure(os.path.dirname(origin), "plugin package")
        folder = os.path.join(os.path.dirname(origin), "__pycache__")
        if os.path.isdir(folder):
            _check_secure(folder, "plugin cache folder")
            compiled = importlib.util.cache_from_source(origin)
            if os.path.exists(compiled):
                _check_secure(compiled, "compiled plugin module")
    else:  # a namespace package: only folders
        for location in spec.submodule_search_locations or ():
            _check_secure(os.path.realpath(location), "plugin package")


# --------------------------------------------------------------------------- contract


def _first_paragraph(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def _options_of(where: str, obj: Any) -> type | None:
    options = getattr(obj, "Options", None)
    if options is None:
        return None
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise PluginError(f"{where}: Options must be a dataclass (decorate it with @dataclass)")
    try:
        list(field_docs(options))
    except TypeError as exc:
        raise PluginError(f"{where}: Options: {exc}") from exc
    return options


def _check_option_names(where: str, options: type | None) -> None:
    """A handler option named like a key the daemon takes from the same table is unusable."""
    if options is None:
        return
    ours = ("plugin", *DELIVERY_KEYS)
    for f in dataclasses.fields(options):
        if f.name in ours:
            raise PluginError(
                f'{where}: option "{f.name}" has the name of a key the daemon takes from '
                f"every handler table ({', '.join(ours)}); rename the option"
            )


def _check_signature(where: str, obj: Any, args: int, expected: str) -> None:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins have no signature: nothing to check
        return
    try:
        sig.bind(*([None] * args))
    except TypeError:
        what = "its constructor" if inspect.isclass(obj) else "the factory"
        raise PluginError(f"{where}: {what} must accept {expected}, but takes {sig}") from None


def _check_handler_members(where: str, target: Any) -> None:
    """Check ``handle``/``start``/``stop`` on a handler class or instance."""
    handle = getattr(target, "handle", None)
    if handle is None:
        raise PluginError(f"{where}: has no handle(message) method")
    if not callable(handle):
        raise PluginError(f"{where}: handle is not callable")
    _check_call(where, "handle", handle, _arity(target, "handle", 1), "(message)")
    for hook in ("start", "stop"):
        fn = getattr(target, hook, None)
        if fn is not None and not inspect.iscoroutinefunction(fn):
            raise PluginError(
                f"{where}: {hook}() must be a coroutine function (async def {hook}(self) -> None)"
            )


def _check_codec_members(where: str, target: Any) -> None:
    for method, arg in (("decode", "(frame)"), ("encode", "(outgoing)")):
        fn = getattr(target, method, None)
        if fn is None or not callable(fn):
            raise PluginError(f"{where}: has no {method}{arg} method")
        if inspect.iscoroutinefunction(fn):
            raise PluginError(f"{where}: {method}() must be a plain function: codecs are pure")
        _check_call(where, method, fn, _arity(target, method, 1), arg)


def _arity(target: Any, name: str, args: int) -> int:
    """How many arguments ``target.name`` binds: one more (``self``) for a method on a class."""
    if inspect.isclass(target) and inspect.isfunction(inspect.getattr_static(target, name, None)):
        return args + 1
    return args


def _check_call(where: str, name: str, fn: Any, args: int, expected: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*([None] * args))
    except TypeError:
        raise PluginError(f"{where}: {name}() must accept {expected}, but takes {sig}") from None


def _verify(kind: Kind, name: str, obj: Any) -> type | None:
    """Check ``obj`` against the plugin contract of ``kind``; return its Options class."""
    where = f'{kind} plugin "{name}"'
    if not callable(obj):
        raise PluginError(f"{where}: expected a class or a factory, got {type(obj).__name__}")
    options = _options_of(where, obj)
    if kind == "handler":
        _check_option_names(where, options)
        if inspect.isclass(obj):
            _check_handler_members(where, obj)
        _check_signature(where, obj, 2, "(options, ctx)")
    elif kind == "source":
        if inspect.isclass(obj):
            _check_source_members(where, obj)
        _check_signature(where, obj, 2, "(options, ctx)")
    else:
        if inspect.isclass(obj):
            _check_codec_members(where, obj)
        _check_signature(where, obj, 1, "(options)")
    return options


def _check_source_members(where: str, obj: Any) -> None:
    for member in ("run", "stop", "close"):
        fn = getattr(obj, member, None)
        if fn is None:
            if member == "run":
                raise PluginError(f"{where}: a source needs an async run() method")
            continue
        if not inspect.iscoroutinefunction(fn):
            raise PluginError(f"{where}: {member}() must be an async method")


def plugin_info(
    kind: Kind, obj: Any, *, name: str | None = None, origin: str = "object"
) -> PluginInfo:
    """Check an already imported plugin object and describe it, without any discovery.

    For tests and embedding: ``plugin_info("handler", MyHandler)`` then
    :func:`build_options` and :func:`create_handler` as the daemon would.
    """
    target = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"
    name = name or target
    options = _verify(kind, name, obj)
    return PluginInfo(
        name=name,
        kind=kind,
        origin=origin,
        target=target,
        obj=obj,
        options=options,
        doc=_first_paragraph(obj),
    )


# --------------------------------------------------------------------------- discovery


def _dist_of(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"] or dist.name, dist.version


def _normalise(dist: str) -> str:
    return dist.lower().replace("_", "-").replace(".", "-")


def _ep_origin(ep: importlib.metadata.EntryPoint) -> str:
    dist, version = _dist_of(ep)
    return "built-in" if _normalise(dist) == _SELF_DIST else f"{dist} {version}"


def _entry_points(group: str) -> dict[str, list[importlib.metadata.EntryPoint]]:
    found: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=group):
        same = found.setdefault(ep.name, [])
        # The same distribution seen twice on sys.path is one registration, not a conflict.
        if not any(e.value == ep.value and _dist_of(e) == _dist_of(ep) for e in same):
            same.append(ep)
    return found


@cache
def _module_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _package_of(modname: str) -> tuple[str | None, str | None]:
    """The distribution and version that installed the top-level module, if any."""
    top = modname.partition(".")[0]
    for dist in _module_distributions().get(top, []):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    module = sys.modules.get(top)
    version = getattr(module, "__version__", None)
    return top, version if isinstance(version, str) else None


#: Modules the built-in sinks import, and the extra of wsroute that installs each.
EXTRAS = {"redis": "redis", "nats": "nats", "httpx": "webhook"}


def _import_failure(where: str, exc: BaseException) -> PluginError:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        extra = EXTRAS.get(exc.name.partition(".")[0])
        if extra is not None:
            return PluginError(
                f'{where} needs the module "{exc.name}", which is not installed: '
                f"install the extra with pip install 'wsroute[{extra}]'"
            )
        return PluginError(
            f'{where} cannot be imported: it needs the module "{exc.name}", which is not installed'
        )
    return PluginError(f"{where} failed to import: {type(exc).__name__}: {exc}")


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
        self._paths = tuple(plugin_paths)
        self._cache: dict[tuple[Kind, str], PluginInfo] = {}

    @classmethod
    def discover(cls, plugin_paths: Sequence[str] = ()) -> Registry:
        """Find the installed entry points and check the ``plugin_paths`` folders.

        Raises :class:`PluginError` for a missing folder or one that others can write.
        Imports nothing: plugins are loaded when :meth:`handler`/:meth:`codec` name them.
        """
        paths = [check_plugin_path(path) for path in plugin_paths]
        return cls({kind: _entry_points(group) for kind, group in GROUPS.items()}, paths)

    @property
    def plugin_paths(self) -> tuple[str, ...]:
        """The checked ``plugin_paths`` folders (real paths), in search order."""
        return self._paths

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
            registered = "; ".join(f"{_ep_origin(ep)} ({ep.value})" for ep in eps)
            raise PluginError(
                f'{kind} plugin "{name}" is registered by more than one distribution: '
                f"{registered}; uninstall one of them"
            )
        ep = eps[0]
        origin = _ep_origin(ep)
        where = f'{kind} plugin "{name}" ({ep.value}, {origin})'
        try:
            obj = ep.load()
        except Exception as exc:
            raise _import_failure(where, exc) from exc
        dist, version = _dist_of(ep)
        return PluginInfo(
            name=name,
            kind=kind,
            origin=origin,
            target=f"{ep.module}:{ep.attr}",
            obj=obj,
            options=_verify(kind, name, obj),
            doc=_first_paragraph(obj),
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
        module, origin = self._import(modname)
        obj: Any = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                hint = did_you_mean(part, [n for n in dir(obj) if not n.startswith("_")])
                raise PluginError(
                    f'{kind} plugin "{name}": {modname} ({origin}) has no attribute "{attr}"{hint}'
                ) from None
        package, version = _package_of(modname)
        if origin.startswith("path "):
            version = getattr(module, "__version__", None)
            package = modname
        return PluginInfo(
            name=name,
            kind=kind,
            origin=origin,
            target=name,
            obj=obj,
            options=_verify(kind, name, obj),
            doc=_first_paragraph(obj),
            package=package,
            version=version if isinstance(version, str) else None,
        )

    # -- imports

    def _find_in_paths(self, top: str) -> importlib.machinery.ModuleSpec | None:
        if not self._paths:
            return None
        return importlib.machinery.PathFinder.find_spec(top, list(self._paths))

    def _import(self, modname: str) -> tuple[ModuleType, str]:
        """Import ``modname``, from the plugin paths first; return it and its origin text."""
        top = modname.partition(".")[0]
        spec = self._find_in_paths(top)
        if spec is None:
            try:
                return importlib.import_module(modname), f"module {modname}"
            except ModuleNotFoundError as exc:
                if exc.name and (modname == exc.name or modname.startswith(exc.name + ".")):
                    where = " in plugin_paths or" if self._paths else ""
                    raise PluginError(
                        f'no module named "{exc.name}"{where} on the Python path'
                    ) from exc
                raise _import_failure(f'module "{modname}"', exc) from exc
            except Exception as exc:
                raise _import_failure(f'module "{modname}"', exc) from exc
        module = self._load_from_path(top, spec)
        parts = modname.split(".")
        for depth in range(2, len(parts) + 1):
            sub = ".".join(parts[:depth])
            try:
                sub_spec = importlib.util.find_spec(sub)
            except Exception as exc:
                raise _import_failure(f'plugin module "{sub}"', exc) from exc
            if sub_spec is None:
                raise PluginError(f'no module named "{sub}" in plugin package "{top}"')
            _check_module_files(sub_spec)
            try:
                module = importlib.import_module(sub)
            except Exception as exc:
                raise _import_failure(f'plugin module "{sub}"', exc) from exc
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
        _check_module_files(spec)
        if spec.loader is None:
            raise PluginError(f'plugin module "{top}" ({location}) cannot be loaded')
        module = importlib.util.module_from_spec(spec)
        sys.modules[top] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(top, None)
            if isinstance(exc, Exception):
                raise _import_failure(f'plugin module "{top}" ({location})', exc) from exc
            raise
        return module

    def _path_modules(self) -> list[tuple[str, str]]:
        """``(module name, file)`` of every module and package in the plugin paths."""
        found: dict[str, str] = {}
        for folder in self._paths:
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

    def all(self) -> list[PluginInfo]:
        """Every plugin found, loaded and checked, for ``wsroute plugins`` (and ``check``).

        Entry points first (handlers, then codecs), then the classes of each
        ``plugin_paths`` module that fit the handler or codec contract, named
        ``module:Class``. A plugin that fails to load is returned with ``error``
        set instead of raising.
        """
        infos: list[PluginInfo] = []
        for kind in GROUPS:
            for name in self.names(kind):
                try:
                    infos.append(self._resolve(kind, name, log=False))
                except PluginError as exc:
                    ep = self._eps[kind][name][0]
                    dist, version = _dist_of(ep)
                    infos.append(
                        PluginInfo(
                            name=name,
                            kind=kind,
                            origin=_ep_origin(ep),
                            target=f"{ep.module}:{ep.attr}",
                            error=str(exc),
                            package=dist,
                            version=version,
                        )
                    )
        for modname, file in self._path_modules():
            try:
                module, _origin = self._import(modname)
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
                kind_of = _looks_like(value)
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


def _looks_like(cls: type) -> Kind | None:
    """Which contract a class in a plugin-path module is meant to fulfil, judged by its methods."""
    if callable(getattr(cls, "handle", None)):
        return "handler"
    if callable(getattr(cls, "decode", None)) and callable(getattr(cls, "encode", None)):
        return "codec"
    if inspect.iscoroutinefunction(getattr(cls, "run", None)):
        return "source"
    return None


# --------------------------------------------------------------------------- building


def build_options(
    info: PluginInfo, table: Mapping[str, Any], path: str, issues: list[ConfigIssue]
) -> Any:
    """Validate a plugin's options table into its ``Options`` dataclass.

    Problems are appended to ``issues`` with key paths under ``path`` (such as
    ``handlers.archive.path``) and :data:`~wsroute.validate.INVALID` is returned;
    a plugin without ``Options`` gets ``None``, and any key is an issue.
    """
    if info.options is None:
        for key in table:
            issues.append(
                ConfigIssue(
                    join_path(path, key), f'unknown key: plugin "{info.name}" takes no options'
                )
            )
        return INVALID if table else None
    try:
        options = convert(info.options, dict(table), path, issues)
    except TypeError as exc:  # an annotation validate cannot convert: the plugin's fault
        issues.append(ConfigIssue(path, f'plugin "{info.name}": {exc}'))
        return INVALID
    register_secrets(secret_values(options))  # options marked secret: masked in every log line
    return options


def _require_loaded(info: PluginInfo) -> None:
    if info.obj is None:
        raise PluginError(info.error or f'{info.kind} plugin "{info.name}" is not loaded')


def create_handler(info: PluginInfo, options: Any, ctx: Any) -> Any:
    """Construct a handler instance as ``obj(options, ctx)`` and check what came back.

    Any exception from the constructor becomes a :class:`PluginError` naming the
    handler and the plugin.
    """
    _require_loaded(info)
    handler_name = getattr(ctx, "name", None)
    where = (
        f'handler "{handler_name}" (plugin "{info.name}")'
        if handler_name
        else (f'handler plugin "{info.name}"')
    )
    try:
        instance = info.obj(options, ctx)
    except Exception as exc:
        raise PluginError(f"{where} could not be created: {type(exc).__name__}: {exc}") from exc
    _check_handler_members(where, instance)
    return instance


def create_source(info: PluginInfo, options: Any, ctx: Any) -> Any:
    """Construct a source instance as ``obj(options, ctx)`` and check what came back."""
    _require_loaded(info)
    where = f'source "{getattr(ctx, "name", "?")}" (plugin "{info.name}")'
    try:
        instance = info.obj(options, ctx)
    except Exception as exc:
        raise PluginError(f"{where} could not be created: {type(exc).__name__}: {exc}") from exc
    _check_source_members(where, instance)
    return instance


def create_codec(info: PluginInfo, options: Any) -> Codec:
    """Construct a codec instance as ``obj(options)`` and check what came back."""
    _require_loaded(info)
    where = f'codec plugin "{info.name}"'
    try:
        instance = info.obj(options)
    except Exception as exc:
        raise PluginError(f"{where} could not be created: {type(exc).__name__}: {exc}") from exc
    _check_codec_members(where, instance)
    codec: Codec = instance
    return codec


# --------------------------------------------------------------------------- listing


def describe(infos: Iterable[PluginInfo]) -> list[dict[str, Any]]:
    """Plain data for ``wsroute plugins --json``: one dict per plugin, options included."""
    result = []
    for info in infos:
        error = info.error
        options: list[dict[str, Any]] = []
        if info.options is not None:
            try:
                options = [dataclasses.asdict(doc) for doc in field_docs(info.options)]
            except TypeError as exc:
                error = error or str(exc)
        result.append(
            {
                "name": info.name,
                "kind": info.kind,
                "origin": info.origin,
                "package": info.package,
                "version": info.version,
                "target": info.target,
                "doc": info.doc,
                "options": options,
                "error": error,
            }
        )
    return result


def format_plugins(infos: Iterable[PluginInfo]) -> str:
    """The human listing of ``wsroute plugins``: handlers, codecs, sources, with their options."""
    described = describe(infos)
    lines: list[str] = []
    kinds = (
        ("handler", "Handler plugins"),
        ("codec", "Codec plugins"),
        ("source", "Source plugins"),
    )
    for kind, title in kinds:
        group = [d for d in described if d["kind"] == kind]
        if kind == "source" and not group:
            continue
        if lines:
            lines.append("")
        lines.append(f"{title}:")
        if not group:
            lines.append("  (none)")
        for plugin in group:
            lines.append("")
            lines.append(f"  {plugin['name']}  ({plugin['origin']}: {plugin['target']})")
            if plugin["error"]:
                lines.append(f"      ERROR: {plugin['error']}")
                continue
            if plugin["doc"]:
                lines.append(f"      {plugin['doc']}")
            if not plugin["options"]:
                lines.append("      (no options)")
            for option in plugin["options"]:
                spec = f"{option['name']}: {option['type']}"
                if option["required"]:
                    spec += ", required"
                elif option["default"] is not None:
                    spec += f" = {option['default']}"
                lines.append(f"      {spec}")
                if option["doc"]:
                    lines.append(f"          {option['doc']}")
    return "\n".join(lines)
