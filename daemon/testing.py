"""Test helpers for plugin authors: run a handler or a codec without a network.

::

    from wsroute.testing import RecordingContext, build_handler, message

    async def test_pong() -> None:
        ctx = RecordingContext("pong")
        handler = build_handler("reply", {"json": {"op": "pong"}}, ctx=ctx)
        await handler.handle(message({"op": "ping"}, key="ping", connection="exchange"))
        assert [(conn, out.json) for conn, out in ctx.sent] == [("exchange", {"op": "pong"})]

Options go through the same validation as in the daemon, so a test also
catches an options table the config would reject.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, cast

import structlog

from .exceptions import ConfigError, ConfigIssue, SendError
from .plugin import Codec, DeadLetter, Frame, Key, Message, Outgoing, StructArg
from .registry import (
    PluginInfo,
    Registry,
    build_options,
    create_codec,
    create_handler,
    plugin_info,
)

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ["RecordingContext", "build_codec", "build_handler", "decode", "message"]


class RecordingContext:
    """A :class:`~wsroute.HandlerContext` that records instead of sending.

    Every ``send`` lands in ``sent`` as ``(connection, Outgoing)``, every
    ``emit`` in ``emitted``; ``subscriptions`` holds the live runtime
    subscriptions by ``(connection, name)``. Connections count as connected, so
    ``subscribe`` also records its frame in ``sent``, as the daemon would send
    it at once. With ``connections`` given, sending anywhere else raises
    :class:`~wsroute.SendError`, as an unknown connection does in the daemon.
    """

    def __init__(self, name: str = "test", *, connections: Iterable[str] | None = None) -> None:
        self._name = name
        # A lazy proxy: it binds with the structlog config of the moment it logs,
        # so structlog.testing.capture_logs() sees the lines.
        self._log = cast("FilteringBoundLogger", structlog.get_logger(handler=name))
        self.connections = None if connections is None else frozenset(connections)
        self.sent: list[tuple[str, Outgoing]] = []
        self.emitted: list[Message] = []
        self.subscriptions: dict[tuple[str, str], Outgoing] = {}

    @property
    def name(self) -> str:
        """The handler's name."""
        return self._name

    @property
    def log(self) -> FilteringBoundLogger:
        """A structlog logger bound with ``handler=NAME``."""
        return self._log

    def _check(self, connection: str) -> None:
        if self.connections is not None and connection not in self.connections:
            raise SendError(f'unknown connection "{connection}"')

    async def send(
        self,
        connection: str,
        *,
        json: Any = None,
        struct: StructArg | None = None,
        text: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        """Record the frame (``ValueError`` for a combination the daemon would refuse)."""
        self._check(connection)
        self.sent.append((connection, Outgoing.build(json=json, struct=struct, text=text, raw=raw)))

    async def emit(self, message: Message) -> None:
        """Record the derived message."""
        self.emitted.append(message)

    async def subscribe(
        self,
        connection: str,
        name: str,
        *,
        json: Any = None,
        struct: StructArg | None = None,
        text: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        """Record the subscription and its immediate send."""
        self._check(connection)
        outgoing = Outgoing.build(json=json, struct=struct, text=text, raw=raw)
        self.subscriptions[(connection, name)] = outgoing
        self.sent.append((connection, outgoing))

    async def unsubscribe(self, connection: str, name: str) -> None:
        """Forget the subscription."""
        self.subscriptions.pop((connection, name), None)


def message(
    body: Any = None,
    *,
    key: Key = None,
    connection: str = "test",
    fields: dict[str, Any] | None = None,
    raw: bytes | str = b"",
    seq: int = 1,
    received_at: float | None = None,
    dead_letter: DeadLetter | None = None,
) -> Message:
    """A :class:`~wsroute.Message` with defaults for what a test does not care about.

    ``received_at`` defaults to now.
    """
    return Message(
        connection,
        key,
        body,
        fields=fields,
        raw=raw,
        seq=seq,
        received_at=time.time() if received_at is None else received_at,
        dead_letter=dead_letter,
    )


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


def build_handler(
    plugin: str | Any,
    options: Mapping[str, Any] | None = None,
    *,
    ctx: RecordingContext | None = None,
) -> Any:
    """A handler instance as the daemon would build it from ``[handlers.NAME]``.

    ``plugin`` is an installed name (``"jsonl"``), a ``"module:attr"`` string or
    the class itself; ``options`` is the TOML table as a dict, validated into the
    plugin's ``Options`` (:class:`~wsroute.ConfigError` if invalid). ``start()``
    is not called.
    """
    info = _info("handler", plugin)
    ctx = RecordingContext() if ctx is None else ctx
    return create_handler(info, _options(info, options, f"handlers.{ctx.name}"), ctx)


def build_codec(plugin: str | Any, options: Mapping[str, Any] | None = None) -> Codec:
    """A codec instance from a name (``"json"``), ``"module:attr"`` or the class, with options."""
    info = _info("codec", plugin)
    return create_codec(info, _options(info, options, f"codecs.{info.name}"))


def decode(
    codec: str | Codec,
    data: bytes | str,
    *,
    options: Mapping[str, Any] | None = None,
    connection: str = "test",
    seq: int = 1,
    received_at: float | None = None,
) -> Message:
    """Decode one raw frame the way a connection using ``codec`` would.

    ``codec`` is a codec name (with ``options`` as its TOML table) or a codec
    instance. Raises :class:`~wsroute.DecodeError` as the codec does.
    """
    if isinstance(codec, str):
        # The built-in codecs load through their entry points only now, on first use.
        instance = build_codec(codec, options)
    else:
        if options is not None:
            raise TypeError("options apply only to a codec given by name")
        instance = codec
    when = time.time() if received_at is None else received_at
    return instance.decode(Frame(connection, data, seq, when))


if TYPE_CHECKING:
    from .plugin import HandlerContext

    def _conforms(ctx: RecordingContext) -> HandlerContext:
        # mypy proves here that RecordingContext implements the HandlerContext protocol.
        return ctx
