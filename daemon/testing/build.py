"""Plugins built and run as the daemon would, without a daemon or a network.

Invariant: a handler's or codec's options go through the daemon's own
validation (:func:`~wsroute.registry.build_options`), so whatever builds here
builds from the same table in a config, and whatever the config would reject
raises :class:`~wsroute.ConfigError` here too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from functools import cache
from typing import Any, TypeVar, overload

import anyio

from ..exceptions import ConfigError, ConfigIssue
from ..plugin import Codec, Frame, Message
from ..registry import (
    PluginInfo,
    Registry,
    build_options,
    create_codec,
    create_handler,
    plugin_info,
)
from .context import RecordingContext

H = TypeVar("H")  # a handler plugin's class
C = TypeVar("C", bound=Codec)  # a codec plugin's class


@cache
def _registry() -> Registry:
    return Registry.discover()


def _info(kind: str, plugin: Any) -> PluginInfo:
    if isinstance(plugin, str):
        return _registry().handler(plugin) if kind == "handler" else _registry().codec(plugin)
    return plugin_info("handler" if kind == "handler" else "codec", plugin)


def _options(info: PluginInfo, options: Mapping[str, Any] | None, path: str) -> Any:
    issues: list[ConfigIssue] = []
    built = build_options(info, options or {}, path, issues)
    if issues:
        raise ConfigError(issues)
    return built


@overload
def build_handler(
    plugin: type[H],
    options: Mapping[str, Any] | None = None,
    *,
    ctx: RecordingContext | None = None,
) -> H: ...


@overload
def build_handler(
    plugin: str,
    options: Mapping[str, Any] | None = None,
    *,
    ctx: RecordingContext | None = None,
) -> Any: ...


def build_handler(
    plugin: str | type[Any],
    options: Mapping[str, Any] | None = None,
    *,
    ctx: RecordingContext | None = None,
) -> Any:
    """A handler instance as the daemon would build it from ``[handlers.NAME]``.

    ``plugin`` is the class itself (the result is typed as an instance of it),
    an installed name (``"jsonl"``) or a ``"module:attr"`` string; ``options``
    is the TOML table as a dict, validated into the plugin's ``Options``
    (:class:`~wsroute.ConfigError` if invalid). ``start()`` is not called.
    """
    info = _info("handler", plugin)
    ctx = RecordingContext() if ctx is None else ctx
    return create_handler(info, _options(info, options, f"handlers.{ctx.name}"), ctx)


@contextlib.asynccontextmanager
async def run_handler(handler: H) -> AsyncIterator[H]:
    """Run a built handler's lifecycle as the daemon does, around the ``async with`` body.

    ``await start()``; then its ``run(task_status=...)``, if it has one, in a task
    group, waiting for ``task_status.started()``; the body (call ``handle()``);
    then ``run`` cancelled and ``await stop()``. Unlike the daemon, a ``run``
    that crashes is not restarted: its exception comes out of the ``async with``.
    """
    start = getattr(handler, "start", None)
    if start is not None:
        await start()
    try:
        async with anyio.create_task_group() as tg:
            run = getattr(handler, "run", None)
            if run is not None:
                await tg.start(run)
            yield handler
            tg.cancel_scope.cancel()
    finally:
        stop = getattr(handler, "stop", None)
        if stop is not None:
            with anyio.CancelScope(shield=True):
                await stop()


@overload
def build_codec(plugin: type[C], options: Mapping[str, Any] | None = None) -> C: ...


@overload
def build_codec(plugin: str, options: Mapping[str, Any] | None = None) -> Codec: ...


def build_codec(plugin: str | type[Any], options: Mapping[str, Any] | None = None) -> Codec:
    """A codec instance from the class (typed as an instance of it), a name (``"json"``)
    or ``"module:attr"``, with options."""
    info = _info("codec", plugin)
    return create_codec(info, _options(info, options, f"codecs.{info.name}"))


def _codec(codec: str | Mapping[str, Any] | Codec, options: Mapping[str, Any] | None) -> Codec:
    if isinstance(codec, str):
        # The built-in codecs load through their entry points only now, on first use.
        return build_codec(codec, options)
    if options is not None:
        raise TypeError("options apply only to a codec given by name")
    if isinstance(codec, Mapping):
        table = dict(codec)
        plugin = table.pop("type", None)
        if not isinstance(plugin, str):
            raise TypeError('a codec table needs its "type", as in [codecs.NAME]')
        return build_codec(plugin, table)
    return codec


def decode(
    codec: str | Mapping[str, Any] | Codec,
    data: bytes | str,
    *,
    options: Mapping[str, Any] | None = None,
    connection: str = "test",
    seq: int = 1,
    received_at: float | None = None,
) -> Message:
    """Decode one raw frame the way a connection using ``codec`` would.

    ``codec`` is a codec name (with ``options`` as its TOML table), a whole
    ``[codecs.NAME]`` table as a dict (``{"type": "struct", "header": "<i",
    ...}``) or a codec instance. Raises :class:`~wsroute.DecodeError` as the
    codec does.
    """
    instance = _codec(codec, options)
    when = time.time() if received_at is None else received_at
    return instance.decode(Frame(connection, data, seq, when))


def decode_all(
    codec: str | Mapping[str, Any] | Codec,
    frames: Iterable[bytes | str],
    *,
    options: Mapping[str, Any] | None = None,
    connection: str = "test",
) -> list[Message]:
    """Decode frames as one connection reads them: ``seq`` from 1, one codec instance.

    For feeding a handler realistic messages: ``for m in decode_all(...): await h.handle(m)``.
    """
    instance = _codec(codec, options)
    now = time.time()
    return [
        instance.decode(Frame(connection, data, seq, now))
        for seq, data in enumerate(frames, start=1)
    ]
