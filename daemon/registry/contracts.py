"""The plugin contracts: what a handler, codec or source must look like to be loaded.

Every plugin is checked when it is loaded (as pluggy's ``_verify_hook`` does for
hook implementations), and every instance when it is created, so a plugin that
does not fit fails ``wsroute check`` with an error naming the plugin and the
problem, not the first message it should have handled.

Invariant: these checks only inspect (signatures, members, the ``Options``
dataclass); they never call the plugin. Each failure is a :class:`PluginError`
whose text starts with the plugin's name.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from ..config import DELIVERY_KEYS
from ..exceptions import PluginError
from ..validate import field_docs
from .info import Kind, PluginInfo

__all__ = [
    "check_codec_members",
    "check_handler_members",
    "check_source_members",
    "first_paragraph",
    "looks_like",
    "plugin_info",
    "verify",
]


def first_paragraph(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
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


def check_handler_members(where: str, target: Any) -> None:
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


def check_codec_members(where: str, target: Any) -> None:
    """Check ``decode``/``encode`` on a codec class or instance: plain functions, one argument."""
    for method, arg in (("decode", "(frame)"), ("encode", "(outgoing)")):
        fn = getattr(target, method, None)
        if fn is None or not callable(fn):
            raise PluginError(f"{where}: has no {method}{arg} method")
        if inspect.iscoroutinefunction(fn):
            raise PluginError(f"{where}: {method}() must be a plain function: codecs are pure")
        _check_call(where, method, fn, _arity(target, method, 1), arg)


def check_source_members(where: str, obj: Any) -> None:
    """Check ``run`` (required), ``stop`` and ``close`` on a source class or instance: async."""
    for member in ("run", "stop", "close"):
        fn = getattr(obj, member, None)
        if fn is None:
            if member == "run":
                raise PluginError(f"{where}: a source needs an async run() method")
            continue
        if not inspect.iscoroutinefunction(fn):
            raise PluginError(f"{where}: {member}() must be an async method")


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


def verify(kind: Kind, name: str, obj: Any) -> type | None:
    """Check ``obj`` against the plugin contract of ``kind``; return its Options class."""
    where = f'{kind} plugin "{name}"'
    if not callable(obj):
        raise PluginError(f"{where}: expected a class or a factory, got {type(obj).__name__}")
    options = _options_of(where, obj)
    if kind == "handler":
        _check_option_names(where, options)
        if inspect.isclass(obj):
            check_handler_members(where, obj)
        _check_signature(where, obj, 2, "(options, ctx)")
    elif kind == "source":
        if inspect.isclass(obj):
            check_source_members(where, obj)
        _check_signature(where, obj, 2, "(options, ctx)")
    else:
        if inspect.isclass(obj):
            check_codec_members(where, obj)
        _check_signature(where, obj, 1, "(options)")
    return options


def looks_like(cls: type) -> Kind | None:
    """Which contract a class in a plugin-path module is meant to fulfil, judged by its methods."""
    if callable(getattr(cls, "handle", None)):
        return "handler"
    if callable(getattr(cls, "decode", None)) and callable(getattr(cls, "encode", None)):
        return "codec"
    if inspect.iscoroutinefunction(getattr(cls, "run", None)):
        return "source"
    return None


def plugin_info(
    kind: Kind, obj: Any, *, name: str | None = None, origin: str = "object"
) -> PluginInfo:
    """Check an already imported plugin object and describe it, without any discovery.

    For tests and embedding: ``plugin_info("handler", MyHandler)`` then
    :func:`build_options` and :func:`create_handler` as the daemon would.
    """
    target = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"
    name = name or target
    options = verify(kind, name, obj)
    return PluginInfo(
        name=name,
        kind=kind,
        origin=origin,
        target=target,
        obj=obj,
        options=options,
        doc=first_paragraph(obj),
    )
