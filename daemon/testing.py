"""Test helpers for plugin authors: a handler or a codec without a network, or end to end.

Without a network::

    from wsroute.testing import RecordingContext, build_handler, message

    async def test_pong() -> None:
        ctx = RecordingContext("pong")
        handler = build_handler("reply", {"json": {"op": "pong"}}, ctx=ctx)
        await handler.handle(message({"op": "ping"}, key="ping", connection="exchange"))
        assert [(conn, out.json) for conn, out in ctx.sent] == [("exchange", {"op": "pong"})]

Options go through the same validation as in the daemon, so a test also
catches an options table the config would reject.

End to end, with the ``wsroute_daemon`` pytest fixture (installed with wsroute
as a pytest plugin): a real upstream on 127.0.0.1 and the daemon in-process on a
config, where ``${WSROUTE_UPSTREAM}`` is the upstream's URL and ``${WSROUTE_TMP}``
the test's temporary folder::

    async def test_end_to_end(wsroute_daemon) -> None:
        upstream = ScriptedUpstream(frames=['{"type": "hello"}'])
        async with wsroute_daemon(CONFIG, upstream=upstream) as daemon:
            seen = daemon.handler("seen")          # a wsroute.testing:Recorder
            await daemon.wait_until(lambda: seen.messages)
        assert seen.messages[0].key == "hello"

A sink's outage, with :func:`run_outage`: the target taken down mid-run and
brought back, the message sent meanwhile dead-lettered, the next one handled::

        async with wsroute_daemon(CONFIG, upstream=ScriptedUpstream()) as daemon:
            outage = await run_outage(daemon, "bus", stop=server.stop, start=server.start)
        assert outage.down["dead_lettered"] == 1
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio
import structlog
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .exceptions import ConfigError, ConfigIssue, SendError
from .plugin import (
    Codec,
    DeadLetter,
    Frame,
    HandlerContext,
    Key,
    Message,
    Outgoing,
    StructArg,
)
from .registry import (
    PluginInfo,
    Registry,
    build_options,
    create_codec,
    create_handler,
    plugin_info,
)

try:
    import pytest
except ImportError:  # the kit works without pytest; only the fixture needs it
    pytest = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from .service import Service

__all__ = [
    "Daemon",
    "Outage",
    "Recorder",
    "RecordingContext",
    "ScriptedUpstream",
    "build_codec",
    "build_handler",
    "decode",
    "decode_all",
    "free_port",
    "message",
    "run_daemon",
    "run_handler",
    "run_outage",
    "wait_until",
]


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


@contextlib.asynccontextmanager
async def run_handler(handler: Any) -> AsyncIterator[Any]:
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


def build_codec(plugin: str | Any, options: Mapping[str, Any] | None = None) -> Codec:
    """A codec instance from a name (``"json"``), ``"module:attr"`` or the class, with options."""
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


# --------------------------------------------------------------------------- end to end


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (for servers a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(
    predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.01
) -> None:
    """Poll ``predicate()`` until it is true; ``TimeoutError`` after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(step)


class Recorder:
    """A handler that keeps what it receives: ``plugin = "wsroute.testing:Recorder"``.

    Reach the instance with :meth:`Daemon.handler` and look at ``messages``.
    ``fail_first`` makes the first attempts raise, to exercise retries and dead letters.
    """

    @dataclass
    class Options:
        fail_first: int = field(
            default=0, metadata={"doc": "Raise on this many attempts in total, then succeed."}
        )

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self.ctx = ctx
        self.messages: list[Message] = []
        self.attempts = 0

    async def handle(self, message: Message) -> None:
        """Record the message (after failing ``fail_first`` attempts)."""
        self.attempts += 1
        if self.attempts <= self.options.fail_first:
            raise RuntimeError(f"{self.ctx.name}: failing attempt {self.attempts} on purpose")
        self.messages.append(message)


class ScriptedUpstream:
    """A real WebSocket server on 127.0.0.1 that sends the frames a test gives it.

    Every client that connects gets ``frames`` in order (``str`` as text
    frames, ``bytes`` as binary). What clients send is kept in ``received``;
    :meth:`send` pushes more frames to every connected client and :meth:`drop`
    cuts them off. ``port`` 0 picks a free one; give a fixed port to stop the
    server and serve again at the same URL (an outage). Use
    :class:`wsroute.demo.ReferenceUpstream` instead for the reference protocol.
    """

    def __init__(self, frames: Sequence[bytes | str] = (), *, port: int = 0) -> None:
        self.frames = list(frames)
        self.port = port
        self.received: list[bytes | str] = []
        self.connections = 0
        self.url = ""
        self._clients: set[ServerConnection] = set()

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Run the server; yields its ``ws://127.0.0.1:PORT/`` URL. Leaving stops it."""
        async with serve(self._session, "127.0.0.1", self.port) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}/"
            try:
                yield self.url
            finally:
                self.drop()  # do not wait for clients to say goodbye

    def drop(self) -> None:
        """Cut every client off without a close frame, as a network failure would."""
        for ws in list(self._clients):
            if ws.transport is not None:
                ws.transport.abort()

    def stall(self) -> None:
        """Stop reading from the clients connected now, as a hung peer would.

        Their frames and pings pile up unread and no pong goes back; the
        connection stays open until :meth:`drop` (or the client gives up).
        Clients that connect later are read as usual.
        """
        for ws in list(self._clients):
            if ws.transport is not None:
                ws.transport.pause_reading()

    @property
    def connected(self) -> int:
        """How many clients are connected right now."""
        return len(self._clients)

    async def send(self, data: bytes | str) -> None:
        """Send one frame to every connected client."""
        for ws in list(self._clients):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(data)

    async def _session(self, ws: ServerConnection) -> None:
        self.connections += 1
        self._clients.add(ws)
        try:
            for data in self.frames:
                await ws.send(data)
            async for data in ws:
                self.received.append(data)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(ws)


class Upstream(Protocol):
    """What :func:`run_daemon` needs of an upstream: ``serve()`` yielding its URL."""

    def serve(self) -> contextlib.AbstractAsyncContextManager[str]: ...


class Daemon:
    """A daemon running in-process for a test; see :func:`run_daemon`."""

    def __init__(self, service: Service, upstream: Any, url: str, tmp_path: Path) -> None:
        self.service = service
        self.upstream = upstream
        self.url = url
        self.tmp_path = tmp_path

    def handler(self, name: str) -> Any:
        """The plugin instance of ``[handlers.NAME]`` (a :class:`Recorder`, say)."""
        return self.service.runners[name].instance

    def stats(self, name: str) -> dict[str, int]:
        """The delivery counters of ``[handlers.NAME]``: received, handled, dead_lettered..."""
        return self.service.runners[name].snapshot()

    async def wait_until(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Poll ``predicate()`` until true; ``TimeoutError`` after ``timeout`` seconds."""
        await wait_until(predicate, timeout)

    def shutdown(self) -> None:
        """Start the ordered shutdown now (leaving the ``async with`` waits for it)."""
        self.service.shutdown()


@contextlib.asynccontextmanager
async def run_daemon(
    config: str,
    *,
    upstream: Upstream | None = None,
    environ: Mapping[str, str] | None = None,
    tmp_path: str | os.PathLike[str] | None = None,
) -> AsyncIterator[Daemon]:
    """Run ``upstream`` (if any) and the daemon on the TOML ``config``; drain both on exit.

    In ``config``, ``${WSROUTE_UPSTREAM}`` is the upstream's URL and
    ``${WSROUTE_TMP}`` a temporary folder (``tmp_path``, or one made and removed
    here); ``environ`` adds variables to the process environment for ``${...}``.
    Leaving the block shuts the daemon down as SIGTERM would: connections close,
    queues drain within ``shutdown_timeout``. An invalid config raises
    :class:`~wsroute.ConfigError`; a plugin that cannot load,
    :class:`~wsroute.PluginError`.
    """
    from .config import loads
    from .service import Service, plan

    async with contextlib.AsyncExitStack() as stack:
        if tmp_path is None:
            tmp_path = stack.enter_context(tempfile.TemporaryDirectory(prefix="wsroute-test-"))
        url = "" if upstream is None else await stack.enter_async_context(upstream.serve())
        variables = dict(os.environ, WSROUTE_UPSTREAM=url, WSROUTE_TMP=os.fspath(tmp_path))
        variables.update(environ or {})
        service = Service(plan(loads(config, path="test.toml", environ=variables)))
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            try:
                yield Daemon(service, upstream, url, Path(tmp_path))
            finally:
                service.shutdown()


@dataclass
class Outage:
    """What :func:`run_outage` saw: the handler's counters (:meth:`Daemon.stats`) per phase."""

    up: dict[str, int]
    """After the first message was handled, the target up."""
    down: dict[str, int]
    """After the second message was dead-lettered, the target down."""
    back: dict[str, int]
    """After the third message was handled, the target up again."""


def _tick(n: int) -> str:
    return json.dumps({"type": "tick", "n": n})


async def _call(action: Callable[[], object]) -> None:
    # A coroutine function is awaited; a plain one (a server's blocking start())
    # runs in a worker thread, so the daemon keeps running meanwhile.
    if inspect.iscoroutinefunction(action):
        await action()
        return
    result = await anyio.to_thread.run_sync(action)
    if inspect.isawaitable(result):
        await result


async def run_outage(
    daemon: Daemon,
    handler: str,
    *,
    serve: Callable[[], contextlib.AbstractAsyncContextManager[object]] | None = None,
    stop: Callable[[], object] | None = None,
    start: Callable[[], object] | None = None,
    ready: Callable[[], object] | None = None,
    delivered: Callable[[], int] | None = None,
    frame: Callable[[int], bytes | str] = _tick,
    timeout: float = 15.0,
) -> Outage:
    """A sink's outage, end to end: handled, target down, dead-lettered, target back, handled.

    ``daemon`` runs with a :class:`ScriptedUpstream` whose messages are routed
    to ``[handlers.HANDLER]`` (and nowhere else that fails), with a
    ``[daemon] dead_letter`` handler and ``timeout``/``retries`` that give up
    within ``timeout`` seconds. The target is either ``serve``, an async
    context manager factory (the target is up inside it, down outside:
    ``ScriptedUpstream(port=...).serve``), or ``stop`` and ``start`` for one
    that is already running (plain functions run in a worker thread, coroutine
    functions are awaited). The phases, each bounded by ``timeout``:

    1. the target is brought up (``serve``), ``ready()`` is awaited if given;
       frame ``frame(1)`` is sent upstream and handled;
    2. the target goes down; ``frame(2)`` is dead-lettered, not handled;
    3. the target comes back; ``frame(3)`` is handled.

    ``frame(n)`` defaults to the JSON text ``{"type": "tick", "n": n}`` (for
    ``codec = "json"``). With ``delivered``, a count of what the target has
    received, it must follow: 1, still 1 during the outage, then 2. Fails with
    an ``AssertionError`` naming the phase and the counters; returns the
    counters of each phase for the test's own checks (``failures``, say), and
    leaves the dead letters (what the dead-letter handler wrote) to the test.
    """
    if (serve is None) == (stop is None or start is None) or (serve and (stop or start)):
        raise TypeError("run_outage needs serve=, or both stop= and start=")
    upstream = daemon.upstream
    if upstream is None or not hasattr(upstream, "send"):
        raise TypeError("run_outage needs a daemon run with a ScriptedUpstream")

    def stats() -> dict[str, int]:
        return daemon.stats(handler)

    async def until(phase: str, what: str, predicate: Callable[[], object]) -> None:
        try:
            await wait_until(predicate, timeout)
        except TimeoutError:
            got = delivered() if delivered is not None else "-"
            raise AssertionError(
                f"outage of {handler!r}, {phase}: {what} not within {timeout}s "
                f"(stats {stats()}, delivered {got})"
            ) from None

    def handled(n: int) -> Callable[[], bool]:
        return lambda: stats()["handled"] == n and (delivered is None or delivered() == n)

    async with contextlib.AsyncExitStack() as serving:

        async def up() -> None:
            if serve is not None:
                await serving.enter_async_context(serve())
            else:
                assert start is not None
                await _call(start)

        async def down() -> None:
            if serve is not None:
                await serving.aclose()
            else:
                assert stop is not None
                await _call(stop)

        await until("start", "the upstream connected", lambda: upstream.connected >= 1)
        if serve is not None:
            await up()
        if ready is not None:
            await until("start", "ready()", ready)
        await upstream.send(frame(1))
        await until("target up", "message 1 handled", handled(1))
        first = stats()

        await down()
        await upstream.send(frame(2))
        await until("target down", "message 2 dead-lettered", lambda: stats()["dead_lettered"] == 1)
        during = stats()
        assert during["handled"] == 1, f"handled during the outage of {handler!r}: {during}"
        if delivered is not None:
            assert delivered() == 1, f"the target got message 2 while down: {delivered()}"

        await up()
        await upstream.send(frame(3))
        await until("target back", "message 3 handled", handled(2))
        after = stats()
        assert after["dead_lettered"] == 1, f"dead-lettered after the outage: {after}"
    return Outage(up=first, down=during, back=after)


if pytest is not None:

    @pytest.fixture
    def wsroute_daemon(
        tmp_path: Path,
    ) -> Callable[..., contextlib.AbstractAsyncContextManager[Daemon]]:
        """``async with wsroute_daemon(config, upstream=...) as daemon:`` — see :func:`run_daemon`.

        The daemon's ``${WSROUTE_TMP}`` is the test's ``tmp_path``.
        """

        def start(
            config: str,
            *,
            upstream: Upstream | None = None,
            environ: Mapping[str, str] | None = None,
        ) -> contextlib.AbstractAsyncContextManager[Daemon]:
            return run_daemon(config, upstream=upstream, environ=environ, tmp_path=tmp_path)

        return start


if TYPE_CHECKING:

    def _conforms(ctx: RecordingContext) -> HandlerContext:
        # mypy proves here that RecordingContext implements the HandlerContext protocol.
        return ctx
