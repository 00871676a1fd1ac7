"""The public plugin API: the types a handler or codec plugin sees.

A handler plugin is a class (or a factory callable) with an optional ``Options``
dataclass and async lifecycle methods::

    from dataclasses import dataclass
    from wsroute import HandlerContext, Message

    class Printer:
        "Print each message on one line."

        @dataclass
        class Options:
            prefix: str = ""

        def __init__(self, options: Options, ctx: HandlerContext) -> None:
            self.options = options

        async def handle(self, message: Message) -> None:
            print(self.options.prefix, message.key, message.body)

``start()`` and ``stop()`` are optional. ``handle`` may be a plain function:
it then runs in a worker thread, off the event loop.

A codec plugin is a class with an optional ``Options`` dataclass, constructed as
``Codec(options)``, with a pure ``decode(frame) -> Message`` that raises
:class:`~wsroute.DecodeError` and nothing else, and ``encode(outgoing) -> bytes | str``.

Nothing in this module does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NewType, Protocol, runtime_checkable

# Defined with the exception tree; part of the plugin API, so importable from here too.
from .exceptions import OptionError

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = [
    "Codec",
    "DeadLetter",
    "Duration",
    "Frame",
    "Handler",
    "HandlerContext",
    "Issue",
    "Key",
    "Message",
    "OptionError",
    "Outgoing",
    "Size",
    "Source",
    "SourceContext",
    "SourceLimits",
    "StructArg",
]

#: A duration in seconds. In TOML it is written with a unit: ``"250ms"``, ``"30s"``, ``"5m"``.
Duration = NewType("Duration", float)
#: A size in bytes. In TOML it is written with a unit: ``"512B"``, ``"64KiB"``, ``"1MiB"``.
Size = NewType("Size", int)

#: A route key: what a codec extracts from a message to pick its routes.
Key = str | int | float | bool | None

#: ``(struct format, values)``: ``("<i", [2])`` packs a little-endian int32 2.
StructArg = tuple[str, Sequence[Any]]


class Frame:
    """One frame as read from an upstream, before decoding.

    ``data`` is ``bytes`` for a binary frame and ``str`` for a text frame;
    ``seq`` counts frames per connection from 1 and is never reset by a
    reconnect; ``received_at`` is Unix time in seconds.
    """

    __slots__ = ("connection", "data", "received_at", "seq")

    def __init__(self, connection: str, data: bytes | str, seq: int, received_at: float) -> None:
        self.connection = connection
        self.data = data
        self.seq = seq
        self.received_at = received_at

    def __repr__(self) -> str:
        kind = "text" if isinstance(self.data, str) else "binary"
        return f"Frame({self.connection!r}, seq={self.seq}, {kind}, {len(self.data)} long)"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why a message was dead-lettered: set on the copy a dead-letter handler receives."""

    reason: str
    """A short machine-friendly reason: ``decode_error``, ``handler_error``, ``timeout``,
    ``shutdown``, ``removed``, ``max_deliveries``, ``outage`` (the engine was unavailable
    for longer than the handler's ``outage_timeout``)."""
    handler: str | None = None
    """The handler that gave up on the message (``None`` for decode errors)."""
    error: str | None = None
    """The error text, when there was one, every secret of the config masked (``***``):
    an error often quotes the peer (an endpoint that echoes the request's headers)."""
    attempts: int = 0
    """How many times the handler tried."""

    def __post_init__(self) -> None:
        if self.error:
            from .logging import mask_secrets  # the record outlives the log line: mask it too

            object.__setattr__(self, "error", mask_secrets(self.error))


class _Unbuilt:
    """The marker of a body not built yet (see :attr:`Message.body`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unbuilt>"


_UNBUILT: Any = _Unbuilt()


class Message:
    """A decoded message, as handlers receive it.

    ``key`` is the route key, ``fields`` the header fields a codec extracted
    (``{"opcode": 2}``), ``body`` the decoded body (JSON value, text or bytes),
    ``raw`` the frame as received, ``seq`` and ``received_at`` come from the frame.
    Treat a message as read-only: the same object is delivered to every handler
    its routes name.

    The body may be **lazy**: a codec can read the route key without building
    the body (the built-in ``json`` and ``struct`` codecs do, for frames of
    1 KiB and more), and the body is then built on the first read of
    :attr:`body`, once, and shared by every handler. A handler that never reads
    it (a sink that forwards ``raw``) never pays for it.
    """

    __slots__ = (
        "_body",
        "_build",
        "body_json",
        "connection",
        "dead_letter",
        "fields",
        "key",
        "raw",
        "received_at",
        "seq",
    )

    #: The body's JSON text exactly as received (``bytes`` or ``str``), when the
    #: codec checked that it is valid JSON; ``None`` otherwise (not JSON, or not
    #: checked: the codec's ``validate = false``). Writing it out verbatim is
    #: cheaper than building :attr:`body` and encoding it again: the record
    #: format (``jsonl``, ``exec``, ``webhook``) does.
    body_json: bytes | str | None

    def __init__(
        self,
        connection: str,
        key: Key,
        body: Any,
        *,
        fields: dict[str, Any] | None = None,
        raw: bytes | str = b"",
        seq: int = 0,
        received_at: float = 0.0,
        dead_letter: DeadLetter | None = None,
    ) -> None:
        self.connection = connection
        self.key = key
        self.fields: dict[str, Any] = {} if fields is None else fields
        self._body = body
        self._build: Callable[[Message], Any] | None = None
        self.body_json = None
        self.raw = raw
        self.seq = seq
        self.received_at = received_at
        self.dead_letter = dead_letter

    @property
    def body(self) -> Any:
        """The decoded body: built on first read when the codec deferred it.

        Building a body the codec did not validate (its ``validate = false``)
        can fail: it then raises :class:`~wsroute.DecodeError`, which fails the
        handler's attempt like any exception (retries, then a ``handler_error``
        dead letter that keeps the raw frame).
        """
        body = self._body
        if body is _UNBUILT:
            build = self._build
            assert build is not None
            body = self._body = build(self)
        return body

    @body.setter
    def body(self, value: Any) -> None:
        self._body = value
        self._build = None
        self.body_json = None

    @property
    def body_built(self) -> bool:
        """Whether :attr:`body` is built already (reading it then costs nothing)."""
        return self._body is not _UNBUILT

    # Neither dunder builds a lazy body: looking at a message must not change it.
    def __repr__(self) -> str:
        return (
            f"Message(connection={self.connection!r}, key={self.key!r}, seq={self.seq}, "
            f"fields={self.fields!r}, body={self._body!r})"
        )

    def __eq__(self, other: object) -> bool:
        """The same message: equal attributes and bodies — both built and equal, or
        both unbuilt by the same builder (the same ``raw`` then builds the same body)."""
        if not isinstance(other, Message):
            return NotImplemented
        mine, theirs = self._body, other._body
        if mine is _UNBUILT or theirs is _UNBUILT:
            same_body = mine is theirs and _same_builder(self._build, other._build)
        else:
            same_body = mine == theirs
        return (
            same_body
            and self.connection == other.connection
            and self.key == other.key
            and self.fields == other.fields
            and self.raw == other.raw
            and self.seq == other.seq
            and self.received_at == other.received_at
            and self.dead_letter == other.dead_letter
        )

    __hash__ = None  # type: ignore[assignment]

    def replace(self, **changes: Any) -> Message:
        """A copy with some attributes changed (``dead_letter=...``, ``key=...``).

        A body not built yet stays unbuilt in the copy (``body=...`` replaces it).
        """
        values: dict[str, Any] = {
            "fields": self.fields,
            "raw": self.raw,
            "seq": self.seq,
            "received_at": self.received_at,
            "dead_letter": self.dead_letter,
        }
        for name, value in changes.items():
            if name in values:
                values[name] = value
            elif name not in ("connection", "key", "body"):
                raise TypeError(f"Message has no attribute {name!r}")
        body_given = "body" in changes
        copy = Message(
            changes.get("connection", self.connection),
            changes.get("key", self.key),
            changes["body"] if body_given else self._body,
            **values,
        )
        if not body_given:
            copy._build = self._build
            copy.body_json = self.body_json
        return copy


def _same_builder(one: Any, other: Any) -> bool:
    """The same builder: one function, of one codec or of two with equal options."""
    owner, theirs = getattr(one, "__self__", None), getattr(other, "__self__", None)
    return one == other or (
        type(owner) is type(theirs)
        and getattr(one, "__func__", None) is getattr(other, "__func__", None)
        and getattr(owner, "options", one) == getattr(theirs, "options", other)
    )


_new_message = Message.__new__


def make_message(
    connection: str,
    key: Key,
    body: Any,
    fields: dict[str, Any],
    raw: bytes | str,
    seq: int,
    received_at: float,
) -> Message:
    """A :class:`Message` built on a codec's per-frame path, at 40% of the cost of
    ``Message(...)`` with keywords (measured: 0.10 µs against 0.26 µs).

    Public (``wsroute.make_message``): the built-in codecs use it; every argument
    is positional and required, ``fields`` a fresh dict (``{}`` for none)."""
    message: Message = _new_message(Message)
    message.connection = connection
    message.key = key
    message.fields = fields
    message._body = body
    message._build = None
    message.body_json = None
    message.raw = raw
    message.seq = seq
    message.received_at = received_at
    message.dead_letter = None
    return message


def make_lazy_message(
    connection: str,
    key: Key,
    build: Callable[[Message], Any],
    body_json: bytes | str | None,
    fields: dict[str, Any],
    raw: bytes | str,
    seq: int,
    received_at: float,
) -> Message:
    """:func:`make_message` with a body built on first read: ``build(message)``.

    ``build`` must be cheap to hold (a codec's bound method, not a closure per
    frame); it reads what it needs from ``message.raw``. It raises
    :class:`~wsroute.DecodeError` for a body it cannot build. ``body_json``:
    the body's JSON text if the codec validated it, else ``None``.
    """
    message: Message = _new_message(Message)
    message.connection = connection
    message.key = key
    message.fields = fields
    message._body = _UNBUILT
    message._build = build
    message.body_json = body_json
    message.raw = raw
    message.seq = seq
    message.received_at = received_at
    message.dead_letter = None
    return message


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A frame to send upstream, before encoding.

    Exactly the combinations ``on_connect`` allows: ``json`` alone (a text
    frame), ``struct`` with or without ``json`` (a binary frame: the packed
    header, then the JSON body), ``text`` alone, or ``raw`` bytes alone.
    """

    json: Any = None
    struct: StructArg | None = None
    text: str | None = None
    raw: bytes | None = None
    has_json: bool = False

    @classmethod
    def build(
        cls,
        *,
        json: Any = None,
        struct: StructArg | None = None,
        text: str | None = None,
        raw: bytes | None = None,
        has_json: bool | None = None,
    ) -> Outgoing:
        """Check the combination and build the frame description; ``ValueError`` if invalid."""
        with_json = json is not None if has_json is None else has_json
        given = [name for name, v in (("text", text), ("raw", raw)) if v is not None]
        if with_json or struct is not None:
            given.insert(0, "json/struct")
        if len(given) != 1:
            raise ValueError(
                "give exactly one of json, struct (optionally with json), text or raw"
                + (f"; got {', '.join(given)}" if given else "")
            )
        if struct is not None:
            fmt, values = struct
            if not isinstance(fmt, str):
                raise ValueError("struct must be (format, values)")
            struct = (fmt, tuple(values))
        return cls(json=json, struct=struct, text=text, raw=raw, has_json=with_json)


@runtime_checkable
class Codec(Protocol):
    """Turns frames into messages and outgoing frame descriptions into frames. Pure: no I/O."""

    def decode(self, frame: Frame) -> Message:
        """Decode one frame; raise :class:`~wsroute.DecodeError` (only) when it cannot."""
        ...

    def encode(self, outgoing: Outgoing) -> bytes | str:
        """Encode one outgoing frame: ``bytes`` is sent as a binary frame, ``str`` as text."""
        ...

    # Optional, not part of the protocol check: ``def check_key(self, key: Key) -> str | None``
    # says why a route key can never match what this codec decodes (``wsroute check``
    # prints it as a warning), or returns None when it may match.


class Handler(Protocol):
    """What the daemon calls on a handler instance. ``start``/``stop`` are optional.

    So is ``async def handle_batch(self, messages: list[Message]) ->
    Mapping[int, BaseException] | None``, called instead of ``handle`` when the
    handler's ``batch`` delivery key is set: ``None`` means every message is
    handled; a mapping names the positions that failed (the others are
    handled); raising fails them all. Retries and dead letters stay per message.
    """

    async def handle(self, message: Message) -> None:
        """Handle one message. Raise to report failure: the daemon retries, then dead-letters.

        Raise :class:`~wsroute.Unavailable` instead when the engine behind the
        handler is unavailable (an outage, not this message's fault): the daemon
        holds the message and calls again once it is back (docs/plugins.md).

        Return only once the effect is durable (written to a file, sent to a
        server): the daemon counts a returned message as handled.
        """
        ...


class HandlerContext(Protocol):
    """What a handler gets from the daemon: its name, a logger, and ways to talk back."""

    @property
    def name(self) -> str:
        """The handler's name: the ``NAME`` in ``[handlers.NAME]``."""
        ...

    @property
    def log(self) -> FilteringBoundLogger:
        """A structlog logger bound with ``handler=NAME``."""
        ...

    async def send(
        self,
        connection: str,
        *,
        json: Any = None,
        struct: StructArg | None = None,
        text: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        """Send one frame upstream through ``connection``'s codec.

        Raises :class:`~wsroute.SendError` when the connection is unknown or
        not connected right now (the daemon's retries then apply).
        """
        ...

    async def emit(self, message: Message) -> None:
        """Route a derived message again, as if it had been received."""
        ...

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
        """Send a frame now (if connected) and again after every reconnect, until unsubscribed.

        ``name`` identifies the subscription: subscribing again under the same
        name replaces it.
        """
        ...

    async def unsubscribe(self, connection: str, name: str) -> None:
        """Forget a runtime subscription; nothing is sent."""
        ...


@dataclass(frozen=True, slots=True)
class SourceLimits:
    """What a source needs from the rest of the config, checked by ``wsroute check``.

    A source class may offer ``@classmethod limits(cls, options) -> SourceLimits``.
    """

    redelivery_after: float | None = None
    """Seconds after which an unacknowledged message may be delivered again elsewhere
    (a Redis stream's ``reclaim.min_idle``): ``wsroute check`` warns when a routed
    handler's ``timeout × (retries + 1)`` is not below it."""
    needs_dead_letter: bool = False
    """The source dead-letters by itself (``max_deliveries``): a dead-letter handler
    (the source's or the daemon's) is then required."""


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem a plugin's ``check`` hook found, checked by ``wsroute check``.

    A handler, source or codec class may offer
    ``@classmethod check(cls, options) -> Iterable[str | Issue]``: cheap
    preconditions of starting (a folder exists, a file is readable), no network.
    The daemon reports each problem with its key path: ``key`` is the option it
    concerns, below the plugin's table (``"path"`` gives ``handlers.NAME.path``;
    ``None``, or a plain string instead of an ``Issue``, the table itself). An
    error fails ``wsroute check``, the start and a reload; a ``warning`` is
    only reported.
    """

    message: str
    key: str | None = None
    warning: bool = False


class SourceContext(Protocol):
    """What a source gets from the daemon: decoding, routing with acknowledgement, dead letters.

    Messages are routed one at a time with :meth:`deliver`, or a batch at a
    time with :meth:`deliver_many` (what one read from the upstream returned:
    one call, one settle callback, no per-message coroutine). Either way a
    message's ``on_settled`` runs once every handler settled it, and never for
    one left unfinished at shutdown.
    """

    @property
    def name(self) -> str:
        """The source's name: the ``NAME`` in ``[sources.NAME]``, used as ``Message.connection``."""
        ...

    @property
    def log(self) -> FilteringBoundLogger:
        """A structlog logger bound with ``source=NAME``."""
        ...

    def decode(self, frame: Frame) -> Message:
        """Decode a frame with the source's codec; raises :class:`~wsroute.DecodeError`."""
        ...

    async def deliver(self, message: Message, on_settled: Callable[[], None] | None = None) -> None:
        """Route a message; waits while a ``block`` queue is full (backpressure).

        ``on_settled`` is called once every handler its routes name has handled
        it or dead-lettered it (after the dead-letter handler wrote it), or it was
        dropped or matched no route: then the source may acknowledge it upstream.
        It is never called for a message still queued or in flight at shutdown:
        that one stays unacknowledged and is delivered again later.
        """
        ...

    async def deliver_many(
        self, messages: Sequence[Message], on_settled: Callable[[int], None] | None = None
    ) -> None:
        """Route ``messages`` in order, as :meth:`deliver` would one by one; for a batch.

        ``on_settled(index)`` is called once ``messages[index]`` settled, as
        :meth:`deliver`'s ``on_settled`` is — in any order across messages (each
        goes to its own handlers), at most once per index, never for a message
        still queued or in flight at shutdown. Backpressure is per message:
        while a ``block`` queue is full the call waits, and the messages after
        it are routed once there is room. If the call is cancelled while it
        waits (shutdown, reload), the messages not routed yet are neither routed
        nor settled: the source leaves them unacknowledged, like any unsettled
        message. One call costs less than a :meth:`deliver` per message.
        """
        ...

    async def dead_letter(
        self,
        message: Message,
        reason: str,
        *,
        error: str | None = None,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        """Send a message to the source's dead-letter handler without routing it
        (``max_deliveries`` exceeded, undecodable entry); ``on_settled`` once written."""
        ...


class Source(Protocol):
    """A producer of messages other than a WebSocket connection, e.g. a Redis stream consumer.

    Constructed as ``Source(options, ctx)``. ``run()`` reads until it is
    cancelled (shutdown, reload), calling ``ctx.deliver`` per message; it
    handles its own reconnects. ``close()`` (optional) runs after the handlers
    drained: acknowledge what settled, close clients.
    """

    async def run(self) -> None:
        """Read and deliver until cancelled."""
        ...
