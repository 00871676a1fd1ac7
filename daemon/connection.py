"""One upstream WebSocket, kept connected: retry loop, keepalive, on_connect, periodic frames,
on_close.

This module and :mod:`wsroute.transport` (the socket: connect, handshake, the
frame reader) are the only ones that talk to the network.
It does not know about routes or handlers: it decodes each frame with its
codec and hands the message to a callback, which returns ``None`` when the
message was queued, or an awaitable when some handler's queue is full under
``overflow = "block"`` — the reader then awaits it, which is how backpressure
reaches the socket. The daemon's callback is its dispatcher; a program's
(:func:`wsroute.connect`, :mod:`wsroute.client`) is a bounded buffer.

The daemon owns its retry loop (``websockets``' own ``async for ... in
connect()`` resets its backoff after every handshake and gives up on 401/403):
capped exponential backoff with jitter, reset only after the connection stayed
up for ``reconnect.reset_after``; ``Retry-After`` honoured on 429/503;
certificate errors logged as errors. Keepalive is ours too, so that a reader
paused by our own backpressure is not mistaken for a dead peer.
"""

from __future__ import annotations

import enum
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import structlog

from . import exceptions
from .config import ConnectionSection, ReconnectSection
from .exceptions import DecodeError, SendError
from .frames import Dispatch, DispatchMany, ReadPath, one_by_one
from .net import redact_url, retry_after
from .plugin import Codec, Frame, Key, Message, Outgoing
from .tls import tls_context
from .transport import (
    BadURL,
    ConnectionClosed,
    HandshakeFailed,
    HandshakeRejected,
    Transport,
    open_transport,
)

__all__ = [
    "Backoff",
    "Connection",
    "ConnectionState",
    "ConnectionStats",
    "redact_url",
    "retry_after",
]

log = structlog.get_logger("wsroute.connection")

DecodeFailed = Callable[[Frame, DecodeError], Awaitable[None] | None]

# Close codes 1012 (service restart) and 1013 (try again later) ask us to wait.
_SLOW_DOWN_CODES = {1012, 1013}
_SLOW_DOWN_DELAY = 5.0


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    HANDSHAKING = "on_connect"
    CONNECTED = "connected"
    WAITING = "waiting"  # between attempts
    STOPPED = "stopped"


@dataclass
class ConnectionStats:
    """Counters of one connection, read by STATUS= and the metrics endpoint."""

    decode_errors: int = 0
    connects: int = 0
    reconnects: int = 0
    failed_attempts: int = 0
    last_frame_at: float = 0.0  # Unix time
    connected_since: float = 0.0  # Unix time, 0 when not connected
    disconnected_at: float = 0.0  # Unix time of the last disconnect, 0 while never
    last_error: str | None = None  # why the last attempt or session ended
    last_error_at: float = 0.0  # Unix time of last_error
    last_close_code: int | None = None
    last_decode_error: str | None = None  # the codec's reason for the last refused frame
    last_decode_error_at: float = 0.0  # Unix time

    def note_error(self, error: str) -> None:
        """Why the last attempt or session ended, and when (``wsroute status`` shows its age)."""
        self.last_error = error
        self.last_error_at = time.time()


class Backoff:
    """Capped exponential delays with jitter: ``uniform(d × (1 − jitter), d)``."""

    def __init__(self, section: ReconnectSection, rng: Callable[[], float] = random.random) -> None:
        self.section = section
        self.rng = rng
        self.attempt = 0

    def next(self) -> float:
        """The delay before the next attempt; grows until ``max``."""
        s = self.section
        base = min(s.max, s.initial * s.factor**self.attempt)
        if base < s.max:
            self.attempt += 1
        return float(base * (1.0 - s.jitter * self.rng()))

    def reset(self) -> None:
        self.attempt = 0


def make_ssl_context(section: ConnectionSection, path: str = "tls") -> ssl.SSLContext | None:
    """The TLS context of a ``wss://`` connection (``None`` for ``ws://``).

    ``path`` is the key path of its ``tls`` table, for errors: ``connections.NAME.tls``.
    """
    if not section.url.startswith("wss://"):
        return None
    return tls_context(section.tls, path)


class _Restart(Exception):
    """Internal: close this session and go on with the retry loop."""


class Connection:
    """A supervised upstream connection; run it with ``await tg.start(conn.run)``.

    ``run`` returns only when :meth:`stop` is called (or the task is
    cancelled): every failure is logged and followed by a reconnect.
    """

    def __init__(
        self,
        name: str,
        section: ConnectionSection,
        codec: Codec,
        dispatch: Dispatch,
        *,
        decode_failed: DecodeFailed | None = None,
        lifecycle: Dispatch | None = None,
        start_delay: float = 0.0,
        dispatch_many: DispatchMany | None = None,
    ) -> None:
        self.name = name
        self.section = section
        self.codec = codec
        self.dispatch = dispatch
        #: ``dispatch`` for a read's messages at once (the daemon's dispatcher has one).
        self.dispatch_many = dispatch_many
        # `$connected`/`$disconnected` take their own path: a frame's `$` key never
        # reaches the routes that name them (the daemon's dispatcher tells them apart).
        self.lifecycle = lifecycle or dispatch
        self.decode_failed = decode_failed
        self.start_delay = start_delay
        self.stats = ConnectionStats()
        self.state = ConnectionState.CONNECTING
        self.log = log.bind(connection=name)
        self.url_for_logs = redact_url(section.url, section.log_query_keys)
        self.subscriptions: dict[str, Outgoing] = {}
        self._on_connect = [
            (step, step.outgoing() if step.is_frame else None) for step in section.on_connect
        ]
        self._every = [(spec.interval, spec.outgoing()) for spec in section.every]
        self._on_close = [frame.outgoing() for frame in section.on_close]
        self._ssl = make_ssl_context(section, f"connections.{name}.tls")
        # This connection's frames, per socket read: numbered, decoded, dispatched.
        self._read = ReadPath(
            name,
            codec,
            dispatch_many or one_by_one(dispatch),
            self._decode_failed,
            self._backpressure,
            self.stats,
        )
        # The open socket, whichever library speaks it.
        self._ws: Transport | None = None
        self._blocked = False
        self._stop = anyio.CancelScope()
        self._stopped = anyio.Event()
        self._disconnected_at: float | None = None
        self._close_cause = ""
        self._stop_cause = "stopped"
        self._announced = False
        if self._ssl is not None and not section.tls.verify:
            self.log.warning("tls_verify_disabled", url=self.url_for_logs)

    # -- public --------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The sequence number of the last frame read (0 before the first)."""
        return self._read.seq

    @property
    def connected(self) -> bool:
        return self._ws is not None and self.state in (
            ConnectionState.HANDSHAKING,
            ConnectionState.CONNECTED,
        )

    async def send(self, outgoing: Outgoing) -> None:
        """Encode and send one frame; :class:`SendError` when not connected."""
        ws = self._socket()
        data = self.codec.encode(outgoing)
        try:
            await ws.send(data)
        except ConnectionClosed as exc:
            raise _closed(f"connection {self.name!r} closed while sending", exc) from exc

    async def send_confirmed(self, outgoing: Outgoing, confirm: str = "pong") -> None:
        """Send one frame and return once the peer has it; :class:`SendError` otherwise.

        ``confirm = "pong"``: a ping sent after the frame was answered, so the
        peer has read the frame. ``"write"``: the frame left the process (it is
        in the kernel's socket buffer); if it is still queued here, a pong is
        awaited instead. A reconnect between the frame and its confirmation is
        a failure: the new socket never carried the frame.
        """
        ws = self._socket()
        data = self.codec.encode(outgoing)
        try:
            await ws.send(data)
            if self._ws is not ws:
                raise SendError(f"connection {self.name!r} was lost while sending")
            transport = ws.transport
            if (
                confirm == "write"
                and transport is not None
                and transport.get_write_buffer_size() == 0  # type: ignore[attr-defined]
            ):
                return
            pong = await ws.ping()
            await pong
        except ConnectionClosed as exc:
            raise _closed(
                f"connection {self.name!r} closed before the peer confirmed", exc
            ) from exc

    def _socket(self) -> Transport:
        ws = self._ws
        if ws is None or not self.connected:
            raise SendError(f"connection {self.name!r} is not connected ({self.state.value})")
        return ws

    async def subscribe(self, name: str, outgoing: Outgoing) -> None:
        """Keep a frame to send after every (re)connect; send it now if connected."""
        self.subscriptions[name] = outgoing
        if self.state is ConnectionState.CONNECTED:
            try:
                await self.send(outgoing)
            except SendError as exc:  # replayed after the reconnect
                self.log.info("subscription_deferred", subscription=name, error=str(exc))

    def unsubscribe(self, name: str) -> None:
        self.subscriptions.pop(name, None)

    def continue_from(self, previous: Connection) -> None:
        """Take over seq, counters and runtime subscriptions of the connection this one replaces.

        A reload that restarts a connection is a reconnect: the new one's first
        connect counts in ``reconnects``, and its ``$connected`` carries the outage.
        """
        self._read.seq = previous._read.seq
        self.subscriptions = dict(previous.subscriptions)
        old = previous.stats
        self.stats.connects = old.connects
        self.stats.reconnects = old.reconnects
        self.stats.decode_errors = old.decode_errors
        self.stats.failed_attempts = old.failed_attempts
        self.stats.last_frame_at = old.last_frame_at
        self.stats.disconnected_at = old.disconnected_at
        self.stats.last_error, self.stats.last_error_at = old.last_error, old.last_error_at
        self.stats.last_decode_error = old.last_decode_error
        self.stats.last_decode_error_at = old.last_decode_error_at
        self.stats.last_close_code = old.last_close_code
        self._disconnected_at = previous._disconnected_at

    def stop(self, cause: str = "stopped") -> None:
        """Stop reading, send the ``on_close`` frames and a close frame, make :meth:`run` return.

        ``cause`` is what the ``$disconnected`` message of an open session says
        (``shutdown``, ``reload``): handlers see every ``$connected`` paired.
        Cancelling :meth:`run` closes the same way. The ``on_close`` frames
        are sent only on a socket still open (never while waiting to
        reconnect), within ``close_timeout``; the close handshake then gets its
        own ``close_timeout``: a stop takes ``2 × close_timeout`` at most.
        """
        self._stop_cause = cause
        self._stop.cancel()

    @property
    def stop_timeout(self) -> float:
        """How long :meth:`stop` may take: the ``on_close`` frames, then the close handshake."""
        close = self.section.close_timeout
        return (2 * close if self._on_close else close) + 1.0

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # -- the retry loop ------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, read, reconnect; until :meth:`stop`."""
        task_status.started()
        backoff = Backoff(self.section.reconnect)
        try:
            with self._stop:
                if self.start_delay > 0:
                    await anyio.sleep(self.start_delay)
                while True:
                    delay = await self._attempt(backoff)
                    self.state = ConnectionState.WAITING
                    self.log.info("reconnect_scheduled", delay=round(delay, 3))
                    await anyio.sleep(delay)
        finally:
            self.state = ConnectionState.STOPPED
            self._stopped.set()

    async def _attempt(self, backoff: Backoff) -> float:
        """One connect + session; returns the delay before the next attempt."""
        self.state = ConnectionState.CONNECTING
        self.log.debug("connecting", url=self.url_for_logs)
        try:
            ws = await open_transport(self.section, self._ssl, log=self.log)
        except HandshakeRejected as exc:
            self.stats.failed_attempts += 1
            status = exc.status
            wait = retry_after(exc.headers) if status in (429, 503) else None
            delay = backoff.next()
            level = "error" if status in (401, 403) else "warning"
            self.stats.note_error(f"handshake_rejected status={status}")
            getattr(self.log, level)(
                "handshake_rejected",
                status=status,
                retry_after=wait,
                url=self.url_for_logs,
            )
            return max(delay, wait) if wait is not None else delay
        except ssl.SSLCertVerificationError as exc:
            self.stats.failed_attempts += 1
            self.stats.note_error(f"tls_error: {exc.verify_message or exc}")
            self.log.error("tls_error", error=exc.verify_message or str(exc), url=self.url_for_logs)
            return backoff.next()
        except ssl.SSLError as exc:
            self.stats.failed_attempts += 1
            self.stats.note_error(f"tls_error: {exc}")
            self.log.error("tls_error", error=str(exc), url=self.url_for_logs)
            return backoff.next()
        except BadURL as exc:
            self.stats.failed_attempts += 1
            error = str(exc).replace(self.section.url, self.url_for_logs)  # it may quote the URL
            self.stats.note_error(f"connect_failed: {error}")
            self.log.error("connect_failed", error=error, url=self.url_for_logs)
            return backoff.next()
        except (OSError, TimeoutError, HandshakeFailed, EOFError) as exc:
            self.stats.failed_attempts += 1
            self.stats.note_error(f"connect_failed: {_short(exc)}")
            self.log.warning("connect_failed", error=_short(exc), url=self.url_for_logs)
            return backoff.next()
        except Exception as exc:  # a bug in the connect path: a failed attempt, never a crash
            self.stats.failed_attempts += 1
            self.stats.note_error(f"connect_failed: {_short(exc)}")
            self.log.exception("connect_crashed", error=_short(exc), url=self.url_for_logs)
            return backoff.next()

        connected_at = time.monotonic()
        try:
            await self._session(ws)
        except Exception as exc:  # a bug must not end the connection for good
            self.log.exception("session_crashed", error=_short(exc))
        except anyio.get_cancelled_exc_class():
            # stop(): at shutdown or when a reload restarts this connection. The
            # handlers still run, and a `$connected` they saw gets its `$disconnected`.
            with anyio.CancelScope(shield=True):
                await self._closed(ws, connected_at, self._stop_cause)
            raise
        if await self._closed(ws, connected_at) >= self.section.reconnect.reset_after:
            backoff.reset()
        delay = backoff.next()
        code, _ = ws.close_details()
        if code in _SLOW_DOWN_CODES:  # also when it came during on_connect
            delay = max(delay, min(self.section.reconnect.max, _SLOW_DOWN_DELAY))
        return delay

    async def _closed(self, ws: Transport, connected_at: float, cause: str = "") -> float:
        """Log the end of a session and send ``$disconnected``; returns how long it was up."""
        self._ws = None
        self.stats.connected_since = 0.0
        self._disconnected_at = time.monotonic()
        self.stats.disconnected_at = time.time()
        up_for = self._disconnected_at - connected_at
        code, reason = ws.close_details()
        stopping = bool(cause)
        cause = self._close_cause or cause
        self.stats.last_close_code = code
        event = "connection_closed" if stopping else "connection_lost"
        self.stats.note_error(f"{event} code={code}" + (f" cause={cause}" if cause else ""))
        getattr(self.log, "info" if stopping else "warning")(
            "connection_closed" if stopping else "connection_lost",
            code=code,
            reason=reason,
            cause=cause or None,
            up_for=round(up_for, 3),
            seq=self._read.seq,
        )
        if self._announced:  # $disconnected only pairs with a $connected
            self._announced = False
            body: dict[str, Any] = {
                "code": code,
                "reason": reason,
                "cause": cause or None,
                "up_for": round(up_for, 6),
            }
            if stopping:
                # Never wait long for queue room here: a stop is under way.
                with anyio.move_on_after(self.section.close_timeout):
                    await self._lifecycle("$disconnected", body)
            else:
                await self._lifecycle("$disconnected", body)
        return up_for

    # -- one session ---------------------------------------------------------

    async def _session(self, ws: Transport) -> None:
        self._ws = ws
        self._close_cause = ""
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        self.stats.connected_since = time.time()
        self.state = ConnectionState.HANDSHAKING
        self.log.info("connected", url=self.url_for_logs, subprotocol=ws.subprotocol)
        # Set once the reader returned: the socket is gone, and a deliberate close
        # (stop, cancellation) arriving now has nobody to say goodbye to.
        peer_gone = False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._handshake, ws, tg)
                if self.section.ping_interval > 0:
                    tg.start_soon(self._keepalive, ws)
                if self.section.idle_timeout > 0:
                    tg.start_soon(self._idle_watch, ws)
                try:
                    await ws.read(self._read.handle)
                    peer_gone = True
                finally:
                    tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            # stop(), or run() cancelled: a deliberate close. Say goodbye first.
            if self._on_close and not peer_gone:
                with anyio.CancelScope(shield=True):
                    await self._send_on_close(ws)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                # A close frame, then close_timeout at most for the peer's, then abort.
                await ws.close()

    async def _send_on_close(self, ws: Transport) -> None:
        """The ``on_close`` frames, in order, before the close frame; ``close_timeout`` at most.

        Not attempted once the socket is closing (the peer's close frame came, or
        the connection was lost): they would never arrive.
        """
        transport = ws.transport
        if transport is None or transport.is_closing():
            self.log.info("on_close_skipped", reason="connection already closing")
            return
        sent = 0
        with anyio.move_on_after(self.section.close_timeout) as scope:
            try:
                for outgoing in self._on_close:
                    await ws.send(self.codec.encode(outgoing))
                    sent += 1
            except ConnectionClosed:
                pass
            except Exception as exc:  # an encode error must not keep the close frame back
                self.log.warning("on_close_failed", error=_short(exc))
        if sent == len(self._on_close):
            self.log.info("on_close_sent", frames=sent)
        else:
            self.log.warning(
                "on_close_incomplete",
                sent=sent,
                frames=len(self._on_close),
                timed_out=scope.cancelled_caught,
            )

    async def _backpressure(self, pending: Awaitable[None]) -> None:
        """Wait for room in a full handler queue; the keepalive knows the reader is paused."""
        self._blocked = True
        try:
            await pending
        finally:
            self._blocked = False

    async def _decode_failed(self, frame: Frame, error: DecodeError) -> None:
        self.stats.last_decode_error = str(error)
        self.stats.last_decode_error_at = time.time()
        self.log.warning(
            "frame_undecodable",
            error=str(error),
            seq=frame.seq,
            kind="text" if isinstance(frame.data, str) else "binary",
            size=len(frame.data),
        )
        if self.decode_failed is not None:
            pending = self.decode_failed(frame, error)
            if pending is not None:  # the dead-letter queue is full: backpressure
                await self._backpressure(pending)

    async def _handshake(self, ws: Transport, tg: anyio.abc.TaskGroup) -> None:
        """Run on_connect, replay subscriptions, announce ``$connected``, start ``every``."""
        try:
            for index, (step, outgoing) in enumerate(self._on_connect):
                if outgoing is not None:
                    await ws.send(self.codec.encode(outgoing))
                elif step.pause is not None:
                    await anyio.sleep(step.pause)
                elif step.expect is not None:
                    await self._wait_for(ws, index, step.expect.key, step.expect.timeout)
            for outgoing in list(self.subscriptions.values()):
                await ws.send(self.codec.encode(outgoing))
        except _Restart:
            return
        except ConnectionClosed:
            return
        self.state = ConnectionState.CONNECTED
        outage = (
            None
            if self._disconnected_at is None
            else round(time.monotonic() - self._disconnected_at, 6)
        )
        self.log.info("ready", on_connect_steps=len(self._on_connect), outage=outage)
        self._announced = True
        await self._lifecycle("$connected", {"outage": outage, "connects": self.stats.connects})
        for interval, outgoing in self._every:
            tg.start_soon(self._periodic, ws, interval, outgoing)

    async def _wait_for(self, ws: Transport, index: int, key: Key, timeout: float) -> None:
        event = anyio.Event()
        self._read.expect = (key, event)
        try:
            with anyio.move_on_after(timeout):
                await event.wait()
        finally:
            self._read.expect = None
        if not event.is_set():
            self._close_cause = f"expect_timeout (on_connect[{index}] key={key!r})"
            self.log.error("expect_timeout", step=index, key=key, timeout=timeout)
            await ws.close(1000, "expected reply not received")
            raise _Restart

    async def _periodic(self, ws: Transport, interval: float, outgoing: Outgoing) -> None:
        data = self.codec.encode(outgoing)
        while True:
            await anyio.sleep(interval)
            try:
                await ws.send(data)
            except ConnectionClosed:
                return

    async def _keepalive(self, ws: Transport) -> None:
        """Ping every ``ping_interval``; no pong within ``ping_timeout`` → abort, reconnect.

        The deadline covers the whole ping: its write too (a peer that stopped
        reading fills our write buffer, and the ping waits for room there). A
        peer declared dead is aborted at once, without a closing handshake. A
        missing pong does not count while our own reader is paused by
        backpressure: the socket is not being read, so the pong cannot arrive.
        """
        interval = self.section.ping_interval
        timeout = self.section.ping_timeout
        while True:
            await anyio.sleep(interval)
            blocked_meanwhile = self._blocked
            try:
                with anyio.move_on_after(timeout) as scope:
                    waiter = await ws.ping()
                    await waiter
            except ConnectionClosed:
                return
            if not scope.cancelled_caught:
                continue
            if blocked_meanwhile or self._blocked:
                self.log.info("keepalive_skipped", reason="reader paused by backpressure")
                continue
            self._close_cause = "keepalive_timeout"
            self.log.warning("keepalive_timeout", ping_timeout=timeout)
            ws.abort()  # do not wait out a close handshake with a silent peer
            return

    async def _idle_watch(self, ws: Transport) -> None:
        """No frame for ``idle_timeout`` (and not paused by us) → reconnect."""
        idle = self.section.idle_timeout
        step = idle / 4
        last_seq = self._read.seq
        quiet_since = time.monotonic()
        while True:
            await anyio.sleep(step)
            if self._read.seq != last_seq or self._blocked:
                last_seq = self._read.seq
                quiet_since = time.monotonic()
                continue
            if time.monotonic() - quiet_since >= idle:
                self._close_cause = "idle_timeout"
                self.log.warning("idle_timeout", idle_timeout=idle)
                ws.abort()
                return

    async def _lifecycle(self, key: str, body: dict[str, Any]) -> None:
        message = Message(self.name, key, body, seq=self._read.seq, received_at=time.time(), raw="")
        pending = self.lifecycle(message)
        if pending is not None:
            await pending


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _closed(what: str, exc: ConnectionClosed) -> exceptions.ConnectionClosed:
    """websockets' close as wsroute's own, transport-neutral :class:`~wsroute.ConnectionClosed`."""
    frame = exc.rcvd or exc.sent
    return exceptions.ConnectionClosed(
        f"{what}: {exc}",
        code=frame.code if frame is not None else None,
        reason=frame.reason if frame is not None else "",
    )
