"""The frame reader: wsroute's own I/O layer around websockets' sans-I/O client protocol.

One :class:`FrameReader` is the asyncio protocol of one upstream socket. It owns
the socket: every read, every write, when reading stops and resumes, when the
TCP connection is aborted. websockets' public sans-I/O
:class:`~websockets.client.ClientProtocol` owns the meaning of everything but
the common frame: the handshake's HTTP, control frames (a ping is answered, a
close echoed), fragments, permessage-deflate, and every check of RFC 6455
(masking, reserved bits and opcodes, sizes, close codes: 1002, 1007, 1009).

What always holds:

- **Each read is bounded**: :meth:`get_buffer` hands the event loop a buffer of
  :data:`~wsroute.wire.READ_SIZE` bytes, on asyncio's selector loop and on
  uvloop alike; a read's frames are handled in one go with nothing else running.
- **Frames are split once**, here, from their headers. A whole, unmasked text
  or binary frame with no reserved bit, within ``max_frame_size``, while the
  protocol is open and no fragmented message is in progress (the *plain* frame)
  goes straight to the :class:`~wsroute.wire.Inbox`. Every other frame goes to
  websockets' protocol **whole** (or, when its header already declares more
  than ``max_frame_size``, as soon as that header is known: websockets refuses
  it from the header), so its parser is always between two frames when the
  next plain frame is taken.
- **Nothing after a failure is delivered**: once the protocol has left the
  open state (a close frame came, or the connection failed: ours or the
  parser's verdict), no data frame reaches the inbox.
- **The inbox bounds what is read**: above its high-water mark the socket is
  not read, and the rest of the read already in hand waits here, unsplit, so
  one read cannot inflate (permessage-deflate) past the mark by more than one
  message.
- **Outgoing bytes are bounded**: pongs and close frames are written by the
  protocol's verdicts, not by a task; above :data:`WRITE_HIGH_WATER` buffered
  bytes the socket is not read either, so a peer that floods pings and never
  reads is pushed back by TCP instead of growing our buffer.
- **close_timeout, then abort**: once the protocol expects the TCP connection
  to close (after any failure it or we detected, and after any close frame),
  the connection is aborted if the peer has not closed it ``close_timeout``
  later.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from websockets.client import ClientProtocol
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from .wire import (
    MAX_FRAGMENTS,
    READ_SIZE,
    Data,
    HandshakeFailed,
    HandshakeRejected,
    Inbox,
)

__all__ = ["WRITE_HIGH_WATER", "FrameReader"]

#: Bytes waiting in the socket's write buffer above which the socket is not read:
#: the pongs and the close frame the protocol answers with count against it.
WRITE_HIGH_WATER = 64 * 1024

#: Frames websockets' protocol is given in one read callback before the rest of the
#: read waits for the next turn of the event loop: a read of tiny control frames
#: (a ping flood: ~2,300 pings in 16 KiB) would otherwise hold the loop ~50 ms.
CONTROL_BUDGET = 64

_OPEN = State.OPEN
_TEXT, _BINARY, _CONT, _PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PONG
# The first byte of a plain frame: FIN, no reserved bit, text or binary.
_FIN_TEXT, _FIN_BINARY = 0x81, 0x82
# ... and of a whole binary message compressed with permessage-deflate (RSV1).
_FIN_BINARY_DEFLATED = 0xC2
_HEAD_END = b"\r\n\r\n"


def _starts_large(view: memoryview) -> bool:
    """Whether a read starts with a plain frame of 1 KiB or more (:meth:`_split_large`)."""
    if len(view) < 1024 or (view[0] != _FIN_BINARY and view[0] != _FIN_TEXT):
        return False
    second = view[1]
    return second == 127 or (second == 126 and ((view[2] << 8) | view[3]) >= 1024)


class FrameReader(asyncio.BufferedProtocol):
    """The asyncio protocol of one upstream socket (see the module docstring).

    :meth:`handshake` sends the upgrade request and waits for the answer;
    :attr:`inbox` then receives every data message, in order.
    """

    def __init__(self, protocol: ClientProtocol, limit: int, close_timeout: float) -> None:
        self.protocol = protocol
        self.close_timeout = close_timeout
        #: The largest plain frame: ``max_frame_size``, the ``max_size`` ``protocol``
        #: was made with (websockets refuses larger frames and messages: 1009).
        self.limit = limit
        self.inbox = Inbox()
        self.inbox.socket = self  # the inbox pauses and resumes reading through us
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        #: Bytes read but not split yet: the start of a frame, or what a full inbox held.
        self._rest = bytearray()
        #: How many bytes :attr:`_rest` needs before splitting can go on.
        self._need = 0
        #: :attr:`_need` is where the one frame :attr:`_rest` starts ends.
        self._frame_end = False
        #: :attr:`_rest` waits for the inbox, not for more bytes.
        self._held = False
        #: Plain frames may be taken: open, no fragmented message, data wanted.
        self._fast = False
        self._open = False
        #: Data frames are delivered; ``False`` once we close or the connection failed.
        self.taking = True
        self._parts: list[bytes] | None = None
        #: The messages of the events being taken (:meth:`_events`): to the inbox together.
        self._batch: list[Data] = []
        self._parts_text = False
        self._inbox_paused = False
        self._write_paused = False
        #: Reading waits one turn of the loop: a read spent its CONTROL_BUDGET.
        self._yielding = False
        self._reading_paused = False
        self._drained: list[asyncio.Future[None]] = []
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self._close_timer: asyncio.TimerHandle | None = None
        self.lost = False
        #: Done once the socket is gone (created with the connection: needs the loop).
        self.lost_waiter: asyncio.Future[None] | None = None
        #: The close frame we sent ourselves (code, reason), if any.
        self.sent: tuple[int, str] | None = None
        # The handshake: the response's head is fed to the protocol up to its end,
        # so that the frames after it in the same read are split here.
        self._response: asyncio.Future[None] | None = None
        self._head_tail = b""
        self._head_done = False
        #: The subprotocol the server chose (its answer's header, which websockets checked).
        self.subprotocol: str | None = None

    # -- the handshake -----------------------------------------------------------

    async def handshake(self, request: Request) -> None:
        """Send the upgrade ``request``; return once the protocol is open.

        Raises :class:`HandshakeRejected` (a status other than 101),
        :class:`HandshakeFailed` (any other bad answer) or ``ConnectionError``.
        """
        self._response = asyncio.get_running_loop().create_future()
        self.protocol.send_request(request)
        self._flush()
        await self._response

    def _handshake_data(self, chunk: bytes) -> None:
        protocol = self.protocol
        rest = b""
        if not self._head_done:
            seen = self._head_tail + chunk
            end = seen.find(_HEAD_END)
            if end < 0:
                self._head_tail = seen[-3:]
            else:
                cut = end + 4 - len(self._head_tail)
                chunk, rest = chunk[:cut], chunk[cut:]
                self._head_done = True
        protocol.receive_data(chunk)
        self._after_handshake_step(rest)

    def _after_handshake_step(self, rest: bytes) -> None:
        protocol = self.protocol
        response = self._response
        assert response is not None
        answers = [e for e in protocol.events_received() if isinstance(e, Response)]
        if not answers and rest and protocol.handshake_exc is None:
            # Not a 101 (which has no body): what follows the head is its body.
            protocol.receive_data(rest)
            rest = b""
            answers = [e for e in protocol.events_received() if isinstance(e, Response)]
        self._flush()
        failed = protocol.handshake_exc
        if failed is not None:
            if not response.done():
                response.set_exception(_handshake_error(failed))
            return
        if not answers:
            return
        # Open: the parser is between two frames with nothing buffered.
        self.subprotocol = answers[0].headers.get("Sec-WebSocket-Protocol")
        self._response = None
        self._open = self._fast = True
        if not response.done():
            response.set_result(None)
        if rest:
            self._split(rest)

    # -- asyncio's callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses: same methods.)
        self.transport = socket = cast(asyncio.Transport, transport)
        self.lost_waiter = asyncio.get_running_loop().create_future()
        socket.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self._response is not None:
            self._handshake_data(bytes(self._view[:nbytes]))
            return
        view = self._view[:nbytes]
        batch: list[Data] = []
        rest = self._rest
        if rest:
            if self._held or len(rest) + nbytes < self._need:
                rest += view
                return
            if not (self._fast and self._frame_end):
                self._rest = bytearray()
                self._handle(b"".join((rest, view)))  # one copy
                return
            # ``rest`` is the start of one frame, which ends in this read: that frame
            # alone is joined; the rest of the read goes on below, in the same batch.
            cut = self._need - len(rest)
            self._rest = bytearray()
            self._split_into(b"".join((rest, view[:cut])), True, batch)
            view = view[cut:]
            if not view or self._rest:  # the end of the read, or held: reading paused
                self._rest += view
                if batch:
                    self.inbox.push_many(batch)
                return
        if not self._fast:
            if batch:
                self.inbox.push_many(batch)
            self._feed(bytes(view))
        elif _starts_large(view):
            self._split_large(view, batch)
        else:
            self._split_into(bytes(view), True, batch)
            if batch:
                self.inbox.push_many(batch)

    def _handle(self, data: bytes) -> None:
        if self._fast:
            self._split(data)
        else:
            self._feed(data)

    def eof_received(self) -> bool | None:
        self._release(everything=True)
        if self._response is not None:
            self.protocol.receive_eof()
            self._after_handshake_step(b"")
            return None
        rest = self._rest
        self._held = False
        if rest:  # a frame cut short: websockets reports it as it would have
            self._rest = bytearray()
            self.protocol.receive_data(bytes(rest))
        self.protocol.receive_eof()
        self._events()
        self._flush()
        self._check_state()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._release(everything=True)
        self._held = False
        self._rest = bytearray()  # a frame cut short: the protocol's EOF says 1006
        self.protocol.receive_eof()  # idempotent: the protocol ends CLOSED
        self._events()
        self.protocol.data_to_send()  # nowhere to send it
        self._check_state()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        response = self._response
        if response is not None and not response.done():
            failed = self.protocol.handshake_exc
            if failed is not None:
                response.set_exception(_handshake_error(failed))
            else:
                response.set_exception(
                    ConnectionError(str(exc) if exc else "connection closed during the handshake")
                )
        self._wake_drained()
        closed = self.protocol.close_exc
        for ping in self._pings.values():
            if not ping.done():
                ping.set_exception(closed)
        self._pings.clear()
        if self.lost_waiter is not None and not self.lost_waiter.done():
            self.lost_waiter.set_result(None)
        self.inbox.wake()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drained()
        self._update_reading()

    # -- reading on and off --------------------------------------------------------

    def pause_reading(self) -> None:
        """The inbox is over its high-water mark."""
        self._inbox_paused = True
        self._update_reading()

    def resume_reading(self) -> None:
        """The inbox caught up."""
        self._inbox_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        # Only an open connection is paused: once closing, what comes is discarded
        # by the protocol, and the peer's close and EOF must get through.
        pause = self._open and (self._inbox_paused or self._write_paused or self._yielding)
        transport = self.transport
        if transport is None or self.lost:
            return
        if pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if not pause and self._held:
            asyncio.get_running_loop().call_soon(self._release)

    def _yield(self, rest: bytes) -> None:
        """Let the loop run before the rest of this read is split (see CONTROL_BUDGET)."""
        self._rest = bytearray(rest)
        self._need = 0
        self._held = True
        self._yielding = True
        self._update_reading()
        asyncio.get_running_loop().call_soon(self._yielded)

    def _yielded(self) -> None:
        self._yielding = False
        self._update_reading()
        self._release()

    def _release(self, everything: bool = False) -> None:
        """Split what a full inbox held back (``everything``: whatever the inbox says)."""
        if not self._held or (self._reading_paused and not everything):
            return
        self._held = False
        data = bytes(self._rest)
        self._rest = bytearray()
        self._need = 0
        if not data:
            return
        if self._fast:
            self._split(data, hold=not everything)
        else:
            self._feed(data)

    # -- frames ----------------------------------------------------------------------

    def _split(self, data: bytes, hold: bool = True) -> None:
        """Split one read into frames: plain ones to the inbox, the rest to websockets.

        The plain frames go to the inbox together, as one batch per run of them (a
        read's, usually), and before any frame websockets gets after them.
        The per-frame path: keep it lean.
        """
        batch: list[Data] = []
        self._split_into(data, hold, batch)
        if batch:
            self.inbox.push_many(batch)

    def _split_into(self, data: bytes, hold: bool, batch: list[Data]) -> None:
        size = len(data)
        pos = 0
        limit = self.limit
        budget = CONTROL_BUDGET
        # Consecutive whole compressed binary messages go to websockets together,
        # from `run` to `pos`: one parse, one push of their messages.
        run = -1
        while size - pos >= 2:
            if self._reading_paused and hold:
                # The inbox (or the write buffer) is full: the rest of this read
                # waits, unsplit, until reading resumes.
                self._rest = bytearray(data[pos if run < 0 else run :])
                self._need = 0
                self._held = True
                return
            first = data[pos]
            second = data[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            if second & 0x80:
                head += 4  # masked: websockets refuses it (1002)
            end = pos + head + length
            if _FIN_TEXT <= first <= _FIN_BINARY and second < 0x80 and length <= limit:
                if run >= 0:
                    if not self._feed_run(data, run, pos):
                        return
                    run = -1
                if end > size:
                    self._keep(data, pos, end)
                    return
                payload = data[pos + head : end]
                pos = end
                if first == _FIN_BINARY:
                    batch.append(payload)
                    continue
                try:
                    batch.append(str(payload, "utf-8"))
                except UnicodeDecodeError as exc:
                    self._push(batch)
                    self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                    if pos < size:
                        self._feed(data[pos:])
                    return
                continue
            # Anything else goes to websockets: whole, or from its header on when the
            # header already declares more than websockets accepts.
            if run >= 0 and (first != _FIN_BINARY_DEFLATED or second >= 0x80 or end > size):
                if not self._feed_run(data, run, pos):
                    return
                run = -1
            if end > size and length <= limit:
                self._keep(data, pos, end)
                return
            budget -= 1
            if first == _FIN_BINARY_DEFLATED and second < 0x80 and end <= size:
                # A whole compressed binary message: nothing of ours can fail it (no
                # UTF-8 to check), so the ones after it may go to websockets with it.
                if run < 0:
                    self._push(batch)  # the messages before it go first
                    run = pos
                pos = end
                if not budget and hold and pos < size:
                    if self._feed_run(data, run, pos):
                        self._yield(data[pos:])
                    return
                continue
            self._push(batch)  # the messages before it go first
            self._feed(data[pos:end])
            pos = end
            if not self._fast:  # closing, failed, or inside a fragmented message
                if pos < size:
                    self._feed(data[pos:])
                return
            if not budget and hold and pos < size:
                self._yield(data[pos:])
                return
        if run >= 0 and not self._feed_run(data, run, min(pos, size)):
            return
        if pos < size:
            self._rest = bytearray(data[pos:])
            self._need = size - pos + 1  # the header is incomplete: any byte may do
            self._frame_end = False

    def _feed_run(self, data: bytes, run: int, pos: int) -> bool:
        """Frames ``data[run:pos]`` to websockets; ``False`` if the plain path stops there
        (closing, failed, inside a fragmented message): the rest of ``data`` went too."""
        self._feed(data[run:pos])
        if self._fast:
            return True
        if pos < len(data):
            self._feed(data[pos:])
        return False

    def _push(self, batch: list[Data]) -> None:
        """Hand the plain messages split so far to the inbox, now."""
        if batch:
            self.inbox.push_many(batch.copy())
            batch.clear()

    def _keep(self, data: bytes | memoryview, pos: int, end: int) -> None:
        """The frame at ``pos`` ends at ``end``, in a later read."""
        self._rest = bytearray(memoryview(data)[pos:])
        self._need = end - pos
        self._frame_end = True

    def _split_large(self, view: memoryview, batch: list[Data]) -> None:
        """A read that starts with plain frames of 1 KiB or more, split without a copy of
        the read (each payload is copied once, into its message); from the first other
        frame on, the rest goes by :meth:`_split_into`. The batch is handed over."""
        size = len(view)
        pos = 0
        limit = self.limit
        while size - pos >= 4 and not self._reading_paused:
            first = view[pos]
            second = view[pos + 1]
            if (first != _FIN_BINARY and first != _FIN_TEXT) or second < 126 or second > 127:
                break
            if second == 126:
                length = (view[pos + 2] << 8) | view[pos + 3]
                head = 4
            else:
                if size - pos < 10:
                    break
                length = int.from_bytes(view[pos + 2 : pos + 10], "big")
                head = 10
            if length > limit:
                break
            end = pos + head + length
            if end > size:
                if batch:
                    self.inbox.push_many(batch)
                self._keep(view, pos, end)
                return
            payload = view[pos + head : end]
            if first == _FIN_BINARY:
                batch.append(bytes(payload))
            else:
                try:
                    batch.append(str(payload, "utf-8"))
                except UnicodeDecodeError:
                    break  # _split fails the connection for it, after the batch
            pos = end
        if pos < size:
            self._split_into(bytes(view[pos:]), True, batch)
        if batch:
            self.inbox.push_many(batch)

    def _feed(self, data: bytes) -> None:
        """Whole frames (or, closing or inside a fragmented message, any bytes) to
        websockets' protocol; then its events, its writes, its state."""
        protocol = self.protocol
        if self._fast is False and self._open and self._parts is not None:
            # Inside a fragmented message: websockets gets whole frames still, so
            # that the plain path can resume between two frames after the last one.
            self._feed_fragmented(data)
            return
        protocol.receive_data(data)
        self._events()
        self._flush()
        self._check_state()

    def _feed_fragmented(self, data: bytes) -> None:
        # Split like _split, but every frame goes to websockets.
        size = len(data)
        pos = 0
        limit = self.limit
        protocol = self.protocol
        budget = CONTROL_BUDGET
        while size - pos >= 2:
            budget -= 1
            if not budget and not self.lost:
                self._yield(data[pos:])
                return
            second = data[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            if second & 0x80:
                head += 4
            end = pos + head + length
            if end > size and length <= limit:
                self._keep(data, pos, end)
                return
            protocol.receive_data(data[pos:end])
            pos = end
            self._events()
            self._flush()
            self._check_state()
            if not self._open:
                if pos < size:
                    protocol.receive_data(data[pos:])
                    self._events()
                    self._flush()
                return
            if self._fast:  # the fragmented message is complete
                if pos < size:
                    self._split(data[pos:])
                return
        if pos < size:
            self._rest = bytearray(data[pos:])
            self._need = size - pos + 1
            self._frame_end = False

    def _events(self) -> None:
        for event in self.protocol.events_received():
            frame: Frame = event  # type: ignore[assignment]  # after the handshake: frames
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY or opcode is _CONT:
                self._data(frame)
            elif opcode is _PONG:
                self._pong(bytes(frame.data))
        self._push_batch()

    def _push_batch(self) -> None:
        """The messages websockets gave since the last push, to the inbox in one go."""
        batch = self._batch
        if batch:
            self._batch = []
            self.inbox.push_many(batch)

    def _data(self, frame: Frame) -> None:
        """A data frame websockets parsed: whole, or a fragment (its order checked)."""
        opcode = frame.opcode
        if opcode is _CONT:
            parts = self._parts
            if parts is None:  # websockets refuses a stray continuation itself
                return
            if len(parts) >= MAX_FRAGMENTS:
                self._push_batch()  # what came before it is delivered
                self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
                return
            parts.append(bytes(frame.data))
        else:
            parts = [bytes(frame.data)]
            self._parts_text = opcode is _TEXT
            if not frame.fin:
                self._parts = parts
                self._fast = False
                return
        if not frame.fin:
            return
        self._parts = None
        self._fast = self._open and self.taking
        if not self.taking:
            return
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        if not self._parts_text:
            self._batch.append(payload)
            return
        try:
            text = payload.decode()
        except UnicodeDecodeError as exc:
            self._push_batch()  # what came before it is delivered
            self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            return
        self._batch.append(text)

    def _pong(self, data: bytes) -> None:
        """A pong acknowledges its ping and every ping sent before it."""
        pings = self._pings
        if data not in pings:
            return
        while pings:
            key, ping = next(iter(pings.items()))
            del pings[key]
            if not ping.done():
                ping.set_result(None)
            if key == data:
                return

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection for what websockets' own receiving would refuse."""
        self.taking = False
        self._parts = None
        if self.protocol.state is _OPEN:
            self.sent = (code, reason)
        self.protocol.fail(code, reason)
        self._flush()
        self._check_state()

    def _check_state(self) -> None:
        if self.protocol.state is _OPEN:
            return
        was_open = self._open
        self._open = self._fast = False
        self._parts = None
        if self._close_timer is None and not self.lost and self.protocol.close_expected():
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(self.close_timeout, self.abort)
        if was_open:
            self._update_reading()
            self.inbox.wake()

    # -- writing -------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or self.lost:
            self.protocol.data_to_send()
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():  # the end of our side of the stream
                with contextlib.suppress(Exception):
                    transport.write_eof()
            else:
                transport.close()

    async def drained(self) -> None:
        """Wait until the write buffer is below its high-water mark (or the socket is gone)."""
        while self._write_paused and not self.lost:
            waiter = asyncio.get_running_loop().create_future()
            self._drained.append(waiter)
            await waiter

    def _wake_drained(self) -> None:
        waiters, self._drained = self._drained, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- what the transport asks -------------------------------------------------------

    def send(self, data: Data) -> None:
        """Write one data frame now (the caller waits for :meth:`drained`)."""
        if isinstance(data, str):
            self.protocol.send_text(data.encode())
        else:
            self.protocol.send_binary(data)
        self._flush()

    def ping(self, data: bytes) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter.add_done_callback(_retrieve)
        self._pings[data] = waiter
        self.protocol.send_ping(data)
        self._flush()
        return waiter

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (once): stop taking data, read whatever comes."""
        self.stop_taking()
        if self.protocol.state is _OPEN:
            self.sent = (code, reason)
            self.protocol.send_close(code, reason)
            self._flush()
            self._check_state()

    def stop_taking(self) -> None:
        """The reader is gone: drop data frames and what waits; read the socket again
        (the peer's reply to our close frame must get through)."""
        self.taking = False
        self._parts = None
        self._fast = False
        self.inbox.discard()
        self._inbox_paused = False
        self._update_reading()

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        if self.transport is not None and not self.lost:
            self.transport.abort()


def _handshake_error(exc: Exception) -> Exception:
    from websockets.exceptions import InvalidStatus

    if isinstance(exc, InvalidStatus):
        return HandshakeRejected(exc.response.status_code, exc.response.headers)
    error = HandshakeFailed(str(exc) or type(exc).__name__)
    error.__cause__ = exc
    return error


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A ping nobody awaits any more (the connection closed): no "never retrieved".
    if not future.cancelled():
        future.exception()
