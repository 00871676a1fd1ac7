"""The library face: one upstream connection inside a program of your own.

:func:`connect` gives a program the daemon's own upstream connection — the
same :class:`~wsroute.connection.Connection`, not a copy: reconnects with
capped backoff and jitter, keepalive pings, ``on_connect`` and runtime
subscriptions replayed after every reconnect, ``on_close`` frames before a
deliberate close — without routes or handlers. Decoded messages wait in a
bounded buffer for ``async for message in client``; a full buffer makes the
connection's reader wait, which stops reading the socket, as a full handler
queue does in the daemon.

Every ``[connections.NAME]`` key is a keyword argument of the same name, type
and validation (the same dataclass and converter as the config file), plus
the buffer's bounds and a few keys of the library's own (:class:`ClientOptions`).
:class:`ConnectOptions` types them for a type checker (a test holds it to the
dataclass). Bad values raise one :class:`~wsroute.ConfigError` naming every bad
argument, the codec's options included.

:mod:`wsroute.sync` is the same for programs without an event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import typing
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypedDict, Union, Unpack, get_args, get_origin

import anyio
import anyio.abc

from .budget import message_size
from .config import ConnectionSection, StructSection
from .connection import Connection, ConnectionState, ConnectionStats, make_ssl_context
from .exceptions import ConfigError, ConfigIssue, ConnectionClosed
from .plugin import Codec, Duration, Message, Outgoing, Size, StructArg
from .tls import TlsOptions
from .validate import _show as show_value
from .validate import convert

__all__ = ["Client", "ClientOptions", "ConnectOptions", "connect"]


@dataclass
class ClientOptions(ConnectionSection):
    """The keyword arguments of :func:`connect`: a ``[connections.NAME]`` table, and more.

    Every key of the connection table keeps its name, type and checks (``url``
    is :func:`connect`'s first argument; ``codec`` is a codec instance or a
    codec plugin's name). The library's own keys bound the buffer of decoded
    messages the program has not taken yet, as a handler's queue is bounded.
    """

    name: str = dataclasses.field(
        default="client",
        metadata={"doc": "The connection's name: in log lines and each Message.connection."},
    )
    queue: int = dataclasses.field(
        default=1000,
        metadata={
            "doc": "Messages the buffer holds before the socket is no longer read.",
            "minimum": 1,
        },
    )
    queue_bytes: Size = dataclasses.field(
        default=Size(16 * 2**20),
        metadata={
            "doc": "Bound on the buffer in bytes, estimated as 3 × each raw frame.",
            "minimum": 1,
        },
    )
    lifecycle: bool = dataclasses.field(
        default=False,
        metadata={"doc": "Also yield the $connected and $disconnected messages."},
    )
    ready_timeout: Duration | None = dataclasses.field(
        default=None,
        metadata={
            "doc": "How long entering `async with` waits for the first connection "
            "(and its on_connect) before TimeoutError; None waits as long as it takes.",
            "above": 0,
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.name:
            raise ValueError("name must not be empty")
        if self.queue < 1:
            raise ValueError(f"queue must be at least 1, got {self.queue}")
        if self.queue_bytes < 1:
            raise ValueError(f"queue_bytes must be at least 1B, got {self.queue_bytes}B")
        if self.ready_timeout is not None and self.ready_timeout <= 0:
            raise ValueError("ready_timeout must be above 0")


class ConnectOptions(TypedDict, total=False):
    """The keyword arguments of :func:`connect` besides ``codec`` and ``codec_options``,
    as a type checker sees them: the keys of :class:`ClientOptions` with the Python
    values they take (durations as seconds or ``"5s"``, sizes as bytes or ``"1MiB"``,
    frames as dicts shaped like their TOML tables). Meanings and defaults: the
    ``[connections.NAME]`` reference and :class:`ClientOptions`."""

    headers: Mapping[str, str]
    ping_interval: float | str
    ping_timeout: float | str
    idle_timeout: float | str
    max_frame_size: int | str
    open_timeout: float | str
    close_timeout: float | str
    subprotocols: Sequence[str]
    compression: Literal["deflate", "none"]
    proxy: str
    redirects: Literal["same-origin", "any", "none"]
    log_query_keys: Sequence[str]
    transport: Literal["websockets", "picows"]
    tls: TlsOptions | Mapping[str, Any]
    reconnect: Mapping[str, Any]
    on_connect: Sequence[Mapping[str, Any]]
    every: Sequence[Mapping[str, Any]]
    on_close: Sequence[Mapping[str, Any]]
    name: str
    queue: int
    queue_bytes: int | str
    lifecycle: bool
    ready_timeout: float | str | None


def connect(
    url: str,
    *,
    codec: Codec | str = "json",
    codec_options: Mapping[str, Any] | None = None,
    **options: Unpack[ConnectOptions],
) -> Client:
    """A reconnecting connection to ``url``, to use as ``async with connect(...) as conn``.

    ``codec`` is a codec instance (``wsroute.StructCodec(...)``, your own) or
    the name of a codec plugin (``"json"``, ``"struct"``, an installed one)
    built with ``codec_options``, checked like a ``[codecs.NAME]`` table.
    ``options`` are the keys of a ``[connections.NAME]`` table, with Python
    values: durations as seconds (``ping_interval=5``) or as in the file
    (``"5s"``), ``struct=("<i", [2])`` in ``on_connect``/``on_close``/``every``
    frames as in :meth:`Client.send`, ``raw`` as ``bytes``; and the keys of
    :class:`ClientOptions`. Nothing connects before ``async with``.

    Raises one :class:`~wsroute.ConfigError` naming every bad argument
    (``ping_interval: expected a duration ...``, ``codec_options.heder: unknown
    key``), or for a codec plugin that cannot be loaded.
    """
    issues: list[ConfigIssue] = []
    table = {key: _python_value(_HINTS.get(key, Any), value) for key, value in options.items()}
    table["url"] = url
    given: object = codec  # what an untyped caller passed
    built: Codec | None = None
    if isinstance(given, str):
        table["codec"] = given
        built = _codec_plugin(given, codec_options or {}, issues)
    elif isinstance(given, Codec):
        table["codec"] = type(given).__name__
        built = given
        if codec_options:
            issues.append(ConfigIssue("codec_options", "only with a codec plugin's name as codec"))
    else:
        issues.append(
            ConfigIssue("codec", f"expected a codec or a codec plugin's name, got {given!r}")
        )
        table["codec"] = "json"  # a stand-in: the other arguments are still checked
    settings = convert(ClientOptions, table, "", issues)
    if issues or built is None:
        raise ConfigError(issues)
    make_ssl_context(settings)  # a TLS file that cannot be read is a bad argument too
    return Client(settings, built)


class Client:
    """One upstream connection of a program: iterate for messages, send frames.

    Built by :func:`connect`. ``async with`` connects (waiting for the first
    connection and its ``on_connect``, ``ready_timeout`` at most) and, on
    leaving, sends the ``on_close`` frames and a close frame. Meanwhile the
    connection reconnects by itself; ``async for message in client`` goes on
    across reconnects and ends once the client is closed and its buffer is
    empty. A program that stops iterating stops the socket being read once
    ``queue`` messages or ``queue_bytes`` wait.
    """

    def __init__(self, options: ClientOptions, codec: Codec) -> None:
        self.options = options
        self.codec = codec
        self._connection: Connection | None = None
        self._messages: deque[Message] = deque()
        self._bytes = 0  # message_size() of what waits in _messages
        # Made on the event loop, by __aenter__ (wsroute.sync builds a Client in
        # the caller's thread, and enters it on its loop's thread).
        self._arrived: anyio.Event  # set when a message arrives or the client ends
        self._room: anyio.Event | None = None  # set when the buffer falls below its bounds
        self._up: anyio.Event  # set while connected (after on_connect)
        self._finished = False  # the connection stopped: no more messages will come
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def connection(self) -> Connection:
        """The daemon's connection object underneath; made by ``async with``."""
        if self._connection is None:
            raise RuntimeError("the client connects in `async with`")
        return self._connection

    # -- state ---------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def state(self) -> ConnectionState:
        """``CONNECTED`` once connected and ``on_connect`` done; ``WAITING`` between attempts."""
        return self.connection.state

    @property
    def connected(self) -> bool:
        """Whether frames can be sent now (``on_connect`` may still be running)."""
        return self.connection.connected

    @property
    def stats(self) -> ConnectionStats:
        """The connection's counters: connects, reconnects, decode errors, the last error."""
        return self.connection.stats

    @property
    def buffered(self) -> int:
        """Messages received and not taken yet."""
        return len(self._messages)

    async def wait_connected(self) -> None:
        """Return once connected and ``on_connect`` is done (at once if it is now);
        :class:`~wsroute.ConnectionClosed` once the client is closed."""
        while not self._ready():
            if self._finished:
                raise ConnectionClosed(f"{self.name}: the client is closed")
            up = self._up
            await up.wait()
            if up is self._up and not self._ready():
                await anyio.sleep(0.05)  # between a session's end and its $disconnected

    def _ready(self) -> bool:
        return self.connection.state is ConnectionState.CONNECTED

    # -- the context manager -------------------------------------------------

    async def __aenter__(self) -> Client:
        if self._connection is not None:
            raise RuntimeError("a Client connects once: call wsroute.connect() again")
        options = self.options
        self._arrived = anyio.Event()
        self._up = anyio.Event()
        self._connection = Connection(
            options.name, options, self.codec, self._put, lifecycle=self._put_lifecycle
        )
        async with contextlib.AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._stop)
            await tg.start(self._run)
            timeout = self.options.ready_timeout
            with anyio.move_on_after(timeout) as scope:
                await self.wait_connected()
            if not scope.cancelled_caught:
                self._stack = stack.pop_all()
                return self
        # Raised once the task group is left, so that it is not wrapped in an exception group.
        error = self.stats.last_error or "no connection yet"
        raise TimeoutError(
            f"{self.name}: not connected within {timeout:g}s (ready_timeout): {error}"
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is not None:
            # The body's exception is not handed to the task group (which would wrap
            # it in an exception group): it propagates as it is once the client closed.
            await stack.aclose()
        return None

    async def close(self) -> None:
        """Send the ``on_close`` frames (if the socket is open) and a close frame; stop.

        Returns once the connection stopped: within ``2 × close_timeout``. Messages
        already buffered can still be taken. Leaving ``async with`` closes too.
        """
        await self._stop()

    async def _stop(self) -> None:
        self.connection.stop("closed")
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.connection.stop_timeout):
            await self.connection.wait_stopped()

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await self.connection.run(task_status=task_status)
        finally:
            self._finished = True
            self._arrived.set()
            self._up.set()
            if self._room is not None:
                self._room.set()

    # -- receiving -----------------------------------------------------------

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Message:
        message = await self.receive()
        if message is None:
            raise StopAsyncIteration
        return message

    async def receive(self) -> Message | None:
        """The next message, waiting for one; ``None`` once closed and nothing is left."""
        while not self._messages:
            if self._finished:
                return None
            self._arrived = anyio.Event()
            await self._arrived.wait()
        message = self._messages.popleft()
        self._bytes -= message_size(message)
        room = self._room
        if room is not None and not self._full():
            self._room = None
            room.set()
        return message

    def _full(self) -> bool:
        return len(self._messages) >= self.options.queue or self._bytes >= self.options.queue_bytes

    def _put(self, message: Message) -> Awaitable[None] | None:
        """The connection's sink: buffer the message; past the bounds, make the reader wait."""
        self._messages.append(message)
        self._bytes += message_size(message)
        self._arrived.set()
        if self._full():
            return self._wait_for_room()
        return None

    def _put_lifecycle(self, message: Message) -> Awaitable[None] | None:
        if message.key == "$connected":
            self._up.set()
        else:
            self._up = anyio.Event()
        return self._put(message) if self.options.lifecycle else None

    async def _wait_for_room(self) -> None:
        while self._full() and not self._finished:
            room = self._room = self._room or anyio.Event()
            await room.wait()

    # -- sending -------------------------------------------------------------

    async def send(
        self,
        *,
        json: Any = None,
        struct: StructArg | None = None,
        text: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        """Send one frame through the codec: ``json`` alone (text), ``struct=("<i", [2])``
        with or without ``json`` (binary: the packed header, then the JSON body),
        ``text`` or ``raw``.

        Raises :class:`~wsroute.SendError` when not connected right now (between
        two attempts, see :meth:`wait_connected`), :class:`~wsroute.ConnectionClosed`
        (a ``SendError``) once the client is closed, ``ValueError`` for a
        combination that is not one frame.
        """
        if self._finished:
            raise ConnectionClosed(f"{self.name}: the client is closed")
        await self.connection.send(Outgoing.build(json=json, struct=struct, text=text, raw=raw))

    async def subscribe(
        self,
        name: str,
        *,
        json: Any = None,
        struct: StructArg | None = None,
        text: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        """Send a frame now (if connected) and again after every reconnect, until
        :meth:`unsubscribe` ``(name)``; the same ``name`` again replaces it."""
        outgoing = Outgoing.build(json=json, struct=struct, text=text, raw=raw)
        await self.connection.subscribe(name, outgoing)

    def unsubscribe(self, name: str) -> None:
        """Stop replaying the subscription ``name`` (nothing is sent)."""
        self.connection.unsubscribe(name)


# -- options: Python values to the config file's ------------------------------

_HINTS = typing.get_type_hints(ClientOptions)


def _python_value(tp: Any, value: Any) -> Any:
    """A Python value as the config file would write it, for the converter.

    Durations as numbers of seconds, ``struct`` frames as ``(format, values)``,
    ``bytes`` (written as hex in the file), tuples and dataclass instances.
    What does not fit is passed on unchanged, for the converter to name.
    """
    if tp is Duration:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return f"{value:f}s" if number and math.isfinite(value) and value > 0 else value
    if tp is bytes and isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
    origin = get_origin(tp)
    if origin in (Union, _UnionType):
        arms = [arm for arm in get_args(tp) if arm is not type(None)]
        return _python_value(arms[0], value) if len(arms) == 1 else value
    if tp is StructSection and _is_struct_arg(value):
        fmt, values = value
        return {"format": fmt, "values": list(values)}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        hints = typing.get_type_hints(tp)
        return {k: _python_value(hints.get(k, Any), v) for k, v in value.items()}
    if origin in (list, tuple) and isinstance(value, list | tuple):
        item = get_args(tp)[0] if get_args(tp) else Any
        return [_python_value(item, v) for v in value]
    if origin is dict and isinstance(value, Mapping):
        args = get_args(tp)
        item = args[1] if len(args) == 2 else Any
        return {k: _python_value(item, v) for k, v in value.items()}
    return value


_UnionType = type(int | None)


def _is_struct_arg(value: Any) -> bool:
    return (
        isinstance(value, tuple | list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], Sequence)
        and not isinstance(value[1], str)
    )


def _codec_plugin(name: str, table: Mapping[str, Any], issues: list[ConfigIssue]) -> Codec | None:
    """The codec plugin ``name`` built with ``table``, checked like a ``[codecs.NAME]``
    table; ``None`` with the problems added to ``issues``."""
    from .exceptions import PluginError
    from .registry import Registry, build_options, create_codec

    registry = Registry.discover()
    try:
        info = registry.codec(name)
    except PluginError as exc:
        issues.append(ConfigIssue("codec", str(exc)))
        return None
    given: object = table  # what an untyped caller passed
    if not isinstance(given, Mapping):
        issues.append(ConfigIssue("codec_options", f"expected a mapping, got {show_value(given)}"))
        return None
    before = len(issues)
    options = build_options(info, table, "codec_options", issues)
    if len(issues) > before:
        return None
    try:
        return create_codec(info, options)
    except PluginError as exc:
        issues.append(ConfigIssue("codec_options", str(exc)))
        return None
