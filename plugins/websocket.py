"""The built-in ``websocket`` handler: forward messages to another WebSocket server.

The outgoing connection is the daemon's own upstream connection class, so it
takes the same options as a ``[connections.NAME]`` table — ``url``,
``headers``, ``tls``, ``proxy``, ``reconnect``, keepalive, ``on_connect``
(a login replayed after every reconnect), ``every`` — and behaves the same:
capped backoff with jitter, ``Retry-After``, keepalive pings. What the target
server sends back is read (so its pongs and close frames get through) and
dropped. ``codec`` only matters to ``on_connect`` steps that ``expect`` a reply:
``json`` reads the reply's route key from its ``type`` field.

(This reuses ``wsroute.connection.Connection`` — its ``send_confirmed`` does
the confirming — which is internal API: the built-in sinks ship with the
daemon and move with it.)

``payload`` picks what is sent per message: ``frame`` — the raw frame as
received, text as text and binary as binary (a message without a raw frame
sends its ``jsonl`` record as JSON text); ``body`` — the decoded body as JSON
text (a bytes body as a binary frame); ``record`` — the ``jsonl`` record as
JSON text.

Outage or failure (:mod:`wsroute.outage`): a server that is down, a
connection not made yet (its ``on_connect`` not done within a second) or lost
while sending is an **outage** — ``handle()`` raises
:class:`~wsroute.Unavailable`, and the daemon holds the message and sends it
again once the connection is back. A message that cannot be encoded is a
**failure**. ``confirm`` says when one counts as handled: ``pong`` (the
default) once the server answered a ping sent after the frame — it has read
the frame, so a connection that dies first is an outage for the message, and
the daemon sends it again (at least once); ``write`` as soon as the frame is in the
kernel's socket buffer (if it is still queued in the process, a pong is
awaited instead) — it survives the daemon being killed, but not the
connection dying just then. With ``concurrency = N``, N frames await their
pongs at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.abc

from wsroute import (
    BytesCodec,
    Codec,
    Connection,
    ConnectionOptions,
    ConnectionState,
    HandlerContext,
    JsonCodec,
    Message,
    Outgoing,
    SendError,
    TextCodec,
    Unavailable,
)
from wsroute.records import encode_record

__all__ = ["WebsocketHandler", "outgoing_for"]

_CODECS: dict[str, type[Any]] = {"bytes": BytesCodec, "json": JsonCodec, "text": TextCodec}
# How long a message waits for a connection being made before it counts as an outage.
_CONNECT_GRACE = 1.0


def outgoing_for(message: Message, payload: str) -> Outgoing:
    """The frame sent for ``message`` under ``payload = "frame"``, ``"body"`` or ``"record"``."""
    if payload == "frame":
        raw = message.raw
        if isinstance(raw, str) and raw:
            return Outgoing(text=raw)
        if raw:
            return Outgoing(raw=bytes(raw))
    elif payload == "body":
        text = message.body_json
        if text is not None:  # validated JSON, sent as received: the body is never built
            return Outgoing(text=text if isinstance(text, str) else text.decode())
        body = message.body
        if isinstance(body, bytes | bytearray | memoryview):
            return Outgoing(raw=bytes(body))
        return Outgoing(json=body, has_json=True)
    return Outgoing(text=encode_record(message)[:-1].decode())


class WebsocketHandler:
    """Forward each message to another WebSocket server, over a kept-up connection.

    Takes every option of a ``[connections.NAME]`` table (url, headers, tls,
    reconnect, on_connect...), plus ``payload`` (frame, body or record) and
    ``confirm`` (write or pong).
    """

    @dataclass
    class Options(ConnectionOptions):
        url: str = field(metadata={"doc": "ws:// or wss:// URL of the server to forward to."})
        codec: Literal["bytes", "json", "text"] = field(
            default="bytes",
            metadata={
                "doc": "How the server's frames are decoded; only on_connect expect steps "
                "look at them (json: the key is the `type` field)."
            },
        )
        payload: Literal["frame", "body", "record"] = field(
            default="frame",
            metadata={
                "doc": "frame: the raw frame as received; body: the decoded body as JSON; "
                "record: the jsonl record as JSON."
            },
        )
        confirm: Literal["pong", "write"] = field(
            default="pong",
            metadata={
                "doc": "Handled once the server answered a ping sent after the frame (pong), "
                "or once the frame is in the kernel's socket buffer (write: faster, but a "
                "connection dying then loses it)."
            },
        )

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self._ctx = ctx
        self._codec: Codec = _CODECS[options.codec]()
        self._connection: Connection | None = None
        self._ready = anyio.Event()

    @property
    def connection(self) -> Connection:
        """The outgoing connection (its ``state`` and ``stats``), once started."""
        if self._connection is None:
            raise SendError(f"handler {self._ctx.name!r} is not started")
        return self._connection

    def _on_message(self, message: Message) -> None:
        # The server's own frames are dropped; its lifecycle tells us when to send.
        if message.key == "$connected":
            self._ready.set()
        elif message.key == "$disconnected" and self._ready.is_set():
            self._ready = anyio.Event()

    async def start(self) -> None:
        """Create the connection; :meth:`run` keeps it up."""
        # Its log lines say connection=handlers.NAME: not one of the config's upstreams.
        self._connection = Connection(
            f"handlers.{self._ctx.name}", self.options, self._codec, self._on_message
        )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The connection loop; the server being down is logged, not fatal.

        Cancelled (before ``stop()``), it closes the connection: a close frame,
        ``close_timeout`` at most for the server's.
        """
        await self.connection.run(task_status=task_status)

    @staticmethod
    def _connected(connection: Connection) -> bool:
        return connection.state is ConnectionState.CONNECTED

    async def handle(self, message: Message) -> None:
        """Send the frame; return once the server confirmed it (``confirm``)."""
        outgoing = outgoing_for(message, self.options.payload)
        connection = self.connection
        if connection.state is not ConnectionState.CONNECTED:
            if self._ready.is_set():  # stale: set by the previous session
                self._ready = anyio.Event()
            with anyio.move_on_after(_CONNECT_GRACE):
                await self._ready.wait()
            if not self._connected(connection):
                raise Unavailable(f"{connection.url_for_logs} is not connected")
        try:
            await connection.send_confirmed(outgoing, self.options.confirm)
        except SendError as exc:
            raise Unavailable(f"handler {self._ctx.name!r}: {exc}") from exc
