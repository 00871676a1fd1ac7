"""The built-in ``nats`` handler: publish each message to a NATS subject, or to JetStream.

Needs the ``nats`` extra (``pip install 'wsroute[nats]'``: nats-py).

A core NATS publish is followed by two flushes (PING/PONG round trips: the
client may send the first PING ahead of the message): the message is handled
once the server has read it. With ``jetstream = true`` the publish
waits for the stream's acknowledgement instead — the message is stored — and
carries a ``Nats-Msg-Id`` made of the connection, ``seq`` and ``received_at``,
so the stream drops the copy a retry sends inside its duplicate window.

HA pairs (``dedupe``): two ingest daemons on the same feed publish the same
frames, each numbering ``seq`` from its own start, so that ID cannot tell their
copies apart. ``dedupe = "seq"`` makes the ID of the connection's name and the
upstream's own sequence number (``dedupe_field``: a header field the codec
extracted, or a dotted path into the JSON body); ``dedupe = "hash"`` of the
connection's name and a hash of the frame (:func:`msg_id`). JetStream stores the
first copy and acknowledges the second as a duplicate, within the stream's
duplicate window: the sink raises a shorter window to ``dedupe_window`` when it
connects. With ``"hash"``, two frames that are legitimately identical (a
heartbeat) inside the window are stored once.

The payload is the message's ``jsonl`` record as JSON (``payload = "record"``),
or the raw frame (``payload = "frame"``) with the fields of a Redis stream entry
as headers: ``connection``, ``key`` (JSON), ``seq``, ``received_at``, and
``kind`` (``text`` for a text frame; ``message`` for a message without a raw
frame, whose payload is then its JSON record).

The client connects in the background and reconnects on its own, forever.

Outage or failure (:mod:`wsroute.outage`): not connected, the connection lost,
no answer within ``ack_timeout``, no responders, no response from the stream
(an election), or a JetStream error with a 5xx/408 code is an **outage**:
``handle()`` raises :class:`~wsroute.Unavailable` and the daemon holds the
message and publishes it again (the same ``Nats-Msg-Id``) once the cluster
answers. A payload over the server's ``max_payload``, a JetStream error for
the message itself (over the stream's ``max_msg_size``, say), or a
permissions violation for the subject is a **failure**: the handler's
``retries``, then the dead letter. A permissions violation comes as an
asynchronous ``-ERR`` from the server: a publish that the server answered
with one since it was sent fails with it, as ``NatsRefused``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, cast

import anyio
import anyio.abc
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from wsroute import Duration, HandlerContext, Message, Unavailable, WsrouteError
from wsroute.outage import is_outage_status
from wsroute.plugins.jetstream.connection import check_servers, connect_kwargs, servers_for_logs
from wsroute.plugins.redis.dedupe import content_digest, upstream_seq
from wsroute.plugins.redis.entry import encode_entry
from wsroute.plugins.sinks import TlsSection
from wsroute.records import encode_record

__all__ = ["NatsHandler", "NatsRefused", "PublishStats", "msg_id", "payload_and_headers"]

# How the server words a refused publish in its asynchronous -ERR.
_PUBLISH_REFUSED = "permissions violation for publish"
# How long a message waits for a connection being made before it counts as an outage.
_CONNECT_GRACE = 1.0


class NatsRefused(WsrouteError, RuntimeError):
    """The server refused this publish (a permissions violation): a failure, not an outage."""


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def payload_and_headers(message: Message, payload: str) -> tuple[bytes, dict[str, str] | None]:
    """The NATS payload and headers of ``message`` for ``payload = "record"`` or ``"frame"``."""
    if payload == "record":
        return encode_record(message)[:-1], None
    fields = encode_entry(message)
    frame = fields.pop("frame")
    assert isinstance(frame, bytes)
    return frame, {name: str(value) for name, value in fields.items()}


def msg_id(message: Message, dedupe: str, dedupe_field: str = "") -> str:
    """The ``Nats-Msg-Id`` of ``message`` under ``dedupe`` (``none``, ``seq``, ``hash``).

    ``none``: the connection, this daemon's ``seq`` and ``received_at`` (a retry's
    copy is dropped, another daemon's is not); ``seq``: the connection and the
    upstream's sequence number (``ValueError`` when the message has none);
    ``hash``: the connection and the hash of the frame's kind and bytes.
    """
    if dedupe == "seq":
        return f"{message.connection}:s:{upstream_seq(message, dedupe_field)}"
    if dedupe == "hash":
        return f"{message.connection}:h:{content_digest(encode_entry(message))}"
    return f"{message.connection}:{message.seq}:{float(message.received_at)!r}"


@dataclass
class PublishStats:
    """The sink's counters (JetStream), logged as ``sink_totals`` when it stops."""

    stored: int = 0  # acknowledged as new by the stream
    duplicates: int = 0  # acknowledged as a duplicate of a stored Nats-Msg-Id


class NatsHandler:
    """Publish each message to a NATS subject, or to JetStream and wait for the stream's ack.

    Core NATS: handled once a flush round trip confirms the server read it.
    JetStream: handled once stored, deduplicated by ``Nats-Msg-Id``. The payload
    is the JSON record, or the raw frame with the metadata in headers.
    """

    @dataclass
    class Options:
        subject: str = field(metadata={"doc": "The subject to publish to."})
        url: str | list[str] = field(
            default="nats://127.0.0.1:4222",
            metadata={
                "doc": "Server URL, or a list of them (nats://, tls://; credentials never logged)."
            },
        )
        jetstream: bool = field(
            default=False,
            metadata={"doc": "Publish to JetStream and wait for the stream's acknowledgement."},
        )
        payload: Literal["record", "frame"] = field(
            default="record",
            metadata={"doc": "record: the jsonl record as JSON; frame: the raw frame + headers."},
        )
        ack_timeout: Duration = field(
            default=Duration(2.0),
            metadata={"doc": "Wait for the flush round trip or the JetStream ack this long."},
        )
        connect_timeout: Duration = field(
            default=Duration(5.0), metadata={"doc": "Budget of one connect attempt."}
        )
        user: str | None = field(default=None, metadata={"doc": "User name."})
        password: str | None = field(
            default=None, metadata={"doc": "Password (never logged).", "secret": True}
        )
        token: str | None = field(
            default=None, metadata={"doc": "Auth token (never logged).", "secret": True}
        )
        creds_file: str | None = field(
            default=None, metadata={"doc": "A .creds file (JWT and NKey seed) to authenticate."}
        )
        tls: TlsSection = field(
            default_factory=TlsSection,
            metadata={"doc": "For tls:// servers: ca_file, cert_file, key_file, verify."},
        )
        reconnect_wait: Duration = field(
            default=Duration(1.0), metadata={"doc": "Pause between reconnect attempts."}
        )
        dedupe: Literal["none", "seq", "hash"] = field(
            default="none",
            metadata={
                "doc": "HA pairs (jetstream): store one copy of frames published by two "
                "ingest daemons, by the upstream's sequence number (seq) or by content "
                "(hash), as the Nats-Msg-Id."
            },
        )
        dedupe_field: str = field(
            default="",
            metadata={
                "doc": "dedupe = seq: the header field, or dotted path into the JSON body, "
                "holding the upstream's sequence number."
            },
        )
        dedupe_window: Duration = field(
            default=Duration(120.0),
            metadata={
                "doc": "dedupe: the stream's duplicate window is raised to this when shorter "
                "(how long a Nats-Msg-Id is remembered)."
            },
        )

        def __post_init__(self) -> None:
            if not self.subject or any(c.isspace() for c in self.subject):
                raise ValueError(f"subject must be a NATS subject without spaces: {self.subject!r}")
            check_servers(self.url)
            if self.ack_timeout <= 0 or self.connect_timeout <= 0:
                raise ValueError("ack_timeout and connect_timeout must be above 0")
            if self.dedupe != "none" and not self.jetstream:
                raise ValueError("dedupe needs jetstream = true: only a stream drops duplicates")
            if self.dedupe == "seq" and not self.dedupe_field:
                raise ValueError('dedupe = "seq" needs dedupe_field (e.g. "seq")')
            if self.dedupe != "seq" and self.dedupe_field:
                raise ValueError('dedupe_field is for dedupe = "seq"')
            if self.dedupe_window < 0.001:
                raise ValueError("dedupe_window must be at least 1ms")

        @property
        def servers(self) -> list[str]:
            """``url`` as a list."""
            return [self.url] if isinstance(self.url, str) else list(self.url)

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self._ctx = ctx
        self._servers_for_logs = servers_for_logs(options.url)
        self.stats = PublishStats()
        self._client = Client()
        self._js: JetStreamContext | None = None
        self._connected = anyio.Event()
        self._quiet = False
        # Permissions violations for publishing to our subject, as the server reported them.
        self._refusals = 0
        self._refusal = ""

    @property
    def connected(self) -> bool:
        """Whether the client is connected right now."""
        return self._client.is_connected

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect in the background: a server that is down does not hold the daemon.

        Started at once; returns once connected (the client reconnects by itself
        from then on), or after logging a connect that cannot succeed.
        """
        task_status.started()
        await self._connect()

    async def _connect(self) -> None:
        options = self.options
        try:
            kwargs = connect_kwargs(
                options,
                name=f"wsroute {self._ctx.name}",
                log=self._ctx.log,
                where=f"handlers.{self._ctx.name}",
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
            await self._client.connect(**kwargs)
        except Exception as exc:  # a bad creds file, for one: nothing to retry
            self._ctx.log.error("nats_connect_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if options.jetstream:
            self._js = self._client.jetstream(timeout=options.ack_timeout)
            if options.dedupe != "none":
                await self._cover_dedupe_window(self._js)
        self._quiet = False
        self._ctx.log.info("nats_connected", servers=self._servers_for_logs)
        self._connected.set()

    async def _cover_dedupe_window(self, js: JetStreamContext) -> None:
        """Raise the stream's duplicate window to ``dedupe_window`` if it is shorter.

        Logged as an error when the stream cannot be found or changed (no stream
        stores the subject yet, or no permission): duplicates older than the
        stream's window are then stored twice.
        """
        options = self.options
        log = self._ctx.log
        try:
            stream = await js.find_stream_name_by_subject(options.subject)
            info = await js.stream_info(stream)
            config = info.config
            window = float(config.duplicate_window or 0)
            if window >= options.dedupe_window:
                return
            config.duplicate_window = float(options.dedupe_window)
            await js.update_stream(config)
            log.info(
                "duplicate_window_raised", stream=stream, was=window, now=options.dedupe_window
            )
        except (nats.errors.Error, OSError) as exc:
            log.error(
                "duplicate_window_unchecked",
                subject=options.subject,
                error=f"{type(exc).__name__}: {exc}",
                note="the stream's duplicate window may be shorter than dedupe_window",
            )

    async def _on_error(self, exc: Exception) -> None:
        if _PUBLISH_REFUSED in str(exc).lower():
            self._refusals += 1
            self._refusal = str(exc)
        # Every failed reconnect attempt reports here: one warning per outage is enough.
        level = "debug" if self._quiet else "warning"
        self._quiet = not self._client.is_connected
        getattr(self._ctx.log, level)(
            "nats_error", servers=self._servers_for_logs, error=f"{type(exc).__name__}: {exc}"
        )

    async def _on_disconnected(self) -> None:
        if self._connected.is_set():
            self._connected = anyio.Event()
            self._ctx.log.warning("nats_disconnected", servers=self._servers_for_logs)

    async def _on_reconnected(self) -> None:
        self._quiet = False
        self._ctx.log.info("nats_reconnected", servers=self._servers_for_logs)
        self._connected.set()

    async def stop(self) -> None:
        """Flush what the client still holds and close it (``run`` was cancelled before)."""
        client = self._client
        if not client.is_closed:
            with anyio.move_on_after(self.options.ack_timeout + 1.0, shield=True):
                await client.close()
        if self.options.jetstream:
            self._ctx.log.info("sink_totals", **dataclasses.asdict(self.stats))

    async def handle(self, message: Message) -> None:
        """Publish; return once flushed (core NATS) or acknowledged (JetStream).

        Raises :class:`~wsroute.Unavailable` when the cluster is (an outage),
        anything else when the message itself was refused (a failure).
        """
        options = self.options
        data, headers = payload_and_headers(message, options.payload)
        if options.jetstream:
            headers = dict(headers or {})
            headers["Nats-Msg-Id"] = msg_id(message, options.dedupe, options.dedupe_field)
        if not self._client.is_connected or (options.jetstream and self._js is None):
            # Not queued in the client's buffer: sent only once a server has it.
            with anyio.move_on_after(min(_CONNECT_GRACE, options.connect_timeout)):
                await self._connected.wait()
            if not self._client.is_connected or (options.jetstream and self._js is None):
                raise Unavailable(f"not connected to {', '.join(self._servers_for_logs)}")
        refusals = self._refusals
        try:
            await self._publish(data, headers)
        except (nats.errors.MaxPayloadError, nats.errors.BadSubjectError):
            raise  # this message: a failure
        except nats.js.errors.APIError as exc:
            if self._refusals != refusals:
                raise NatsRefused(self._refusal) from exc
            if exc.code is not None and is_outage_status(exc.code):
                raise Unavailable(_describe(exc)) from exc
            raise
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            if self._refusals != refusals:
                raise NatsRefused(self._refusal) from exc
            raise Unavailable(_describe(exc)) from exc
        if self._refusals != refusals:
            raise NatsRefused(self._refusal)

    async def _publish(self, data: bytes, headers: dict[str, str] | None) -> None:
        options = self.options
        if self._js is not None:
            ack = await self._js.publish(
                options.subject, data, timeout=options.ack_timeout, headers=headers
            )
            if ack.duplicate:
                self.stats.duplicates += 1
            else:
                self.stats.stored += 1
            return
        await self._client.publish(options.subject, data, headers=headers)
        # The client writes a flush's PING at once but the publish from its buffer a
        # moment later: the first PONG can come before the server read the message
        # (and before its -ERR). The second PING leaves after the message: its PONG
        # confirms the server read it, and a refusal arrives before it.
        timeout = cast(int, options.ack_timeout)  # seconds; floats work
        await self._client.flush(timeout=timeout)
        await self._client.flush(timeout=timeout)
