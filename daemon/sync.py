"""The library face for programs without an event loop: ``wsroute.sync.connect()``.

The same :class:`~wsroute.client.Client` — and so the daemon's connection —
run by an event loop on a background thread (an anyio blocking portal), as
websockets' own synchronous client does. Each call (:meth:`SyncClient.send`,
:meth:`SyncClient.receive`, iteration) blocks the calling thread until the
loop thread did it; the reconnects, keepalive and ``on_connect`` replays go on
in the background meanwhile. Options and errors are those of
:func:`wsroute.connect`, checked in the calling thread.

Use it from one thread at a time; in async code use :func:`wsroute.connect`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Unpack

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .client import Client, ConnectOptions
from .client import connect as _connect
from .connection import ConnectionState, ConnectionStats
from .plugin import Codec, Message, StructArg

__all__ = ["SyncClient", "connect"]


def connect(
    url: str,
    *,
    codec: Codec | str = "json",
    codec_options: Mapping[str, Any] | None = None,
    **options: Unpack[ConnectOptions],
) -> SyncClient:
    """A reconnecting connection for ``with wsroute.sync.connect(url, ...) as conn:``.

    Arguments as for :func:`wsroute.connect`; bad ones raise
    :class:`~wsroute.ConfigError` here, before any thread starts.
    """
    return SyncClient(_connect(url, codec=codec, codec_options=codec_options, **options))


class SyncClient:
    """A :class:`~wsroute.client.Client` driven from blocking code.

    ``with`` starts the loop thread and connects (``ready_timeout`` at most);
    leaving it sends the ``on_close`` frames and a close frame, then ends the
    thread. ``for message in conn`` blocks for each message and ends once the
    client is closed.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._stack: contextlib.ExitStack | None = None
        self._portal: BlockingPortal | None = None

    def __enter__(self) -> SyncClient:
        if self._stack is not None:
            raise RuntimeError("a SyncClient is entered once")
        with contextlib.ExitStack() as stack:
            portal = stack.enter_context(start_blocking_portal("asyncio"))
            stack.enter_context(portal.wrap_async_context_manager(self.client))
            self._portal = portal
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Send the ``on_close`` frames and a close frame, stop the loop thread."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _call(self) -> BlockingPortal:
        if self._portal is None or self._stack is None:
            raise anyio.ClosedResourceError("use the client inside `with`, before close()")
        return self._portal

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self.client.state

    @property
    def connected(self) -> bool:
        return self.client.connected

    @property
    def stats(self) -> ConnectionStats:
        return self.client.stats

    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until connected and ``on_connect`` is done; ``TimeoutError`` after ``timeout``."""
        self._call().call(_with_timeout, self.client.wait_connected, timeout)

    # -- receiving -----------------------------------------------------------

    def __iter__(self) -> Iterator[Message]:
        while True:
            message = self.receive()
            if message is None:
                return
            yield message

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message; ``None`` once closed and drained.

        ``TimeoutError`` when none came within ``timeout`` seconds (``None``: wait).
        """
        if self._stack is None and self._portal is not None:
            return None  # closed
        message: Message | None = self._call().call(_with_timeout, self.client.receive, timeout)
        return message

    # -- sending -------------------------------------------------------------

    def send(
        self,
        *,
        json: Any = None,
        struct: StructArg | None = None,
        text: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        """:meth:`wsroute.client.Client.send`, blocking until the frame is written."""
        send = functools.partial(self.client.send, json=json, struct=struct, text=text, raw=raw)
        self._call().call(send)

    def subscribe(
        self,
        name: str,
        *,
        json: Any = None,
        struct: StructArg | None = None,
        text: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        """:meth:`wsroute.client.Client.subscribe`: now, and after every reconnect."""
        subscribe = functools.partial(
            self.client.subscribe, name, json=json, struct=struct, text=text, raw=raw
        )
        self._call().call(subscribe)

    def unsubscribe(self, name: str) -> None:
        self._call().call(_sync, self.client.unsubscribe, name)


async def _with_timeout(function: Any, timeout: float | None) -> Any:
    with anyio.fail_after(timeout):
        return await function()


async def _sync(function: Any, *args: Any) -> Any:
    return function(*args)
