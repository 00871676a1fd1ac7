"""The config schema: the typed sections a config file becomes.

Invariant: these dataclasses (and the constants beside them) are the whole
shape of a valid config. The rest of the daemon consumes only these objects;
past the loader there are no ``.get()`` chains. Each class checks its own
values in ``__post_init__``; the reference (docs/config.md) is generated from
their types, defaults and ``doc`` metadata, so the docs cannot drift from them.

A ``__post_init__`` that rejects one key starts its message with that key's
name (``"queue must be at least 1, got 0"``): the loader then reports it at
the key's own path (``handlers.archive.queue: must be at least 1, got 0``).
"""

from __future__ import annotations

import importlib.util
import math
import re
import struct as _struct
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from ..exceptions import ConfigIssue
from ..net import check_url, redact_url
from ..plugin import Duration, Key, OptionError, Outgoing, Size
from ..tls import TlsOptions
from ..validate import BOUNDS
from ..validate import _show as show_value

DELIVERY_KEYS = (
    "queue",
    "queue_bytes",
    "overflow",
    "concurrency",
    "timeout",
    "retries",
    "outage_timeout",
    "dead_letter",
    "batch",
)
LIFECYCLE_KEYS = ("$connected", "$disconnected")


def _doc(text: str, *, schema: dict[str, Any] | None = None, **kw: Any) -> Any:
    """A documented field. Bounds (``minimum=1``, ``above=0``, ``maximum=1.0``) are
    checked by the converter and stated in the JSON Schema; ``schema`` adds JSON
    Schema keywords for a rule ``__post_init__`` checks (a URL's scheme)."""
    metadata: dict[str, Any] = {"doc": text}
    for key in (*BOUNDS, "bound_note"):  # bound_note: why, added to a bound's error
        if key in kw:
            metadata[key] = kw.pop(key)
    if schema:
        metadata["schema"] = schema
    return field(metadata=metadata, **kw)


@dataclass
class ApiSection:
    """``[daemon.api]``: the operator's API — metrics, health, status, tap. Off unless
    ``listen`` names an address."""

    listen: list[str] = _doc(
        'Where to serve it: "HOST:PORT" (TCP; "[::1]:PORT" for IPv6) and/or '
        '"unix:PATH" (a Unix socket, e.g. "unix:/run/wsroute/api.sock"). Empty: no API.',
        default_factory=list,
    )
    socket_mode: str = _doc(
        'Permissions of the Unix sockets, in octal: "0660".',
        default="0660",
        schema={"pattern": r"^\s*\+?(0[oO])?0*[0-7]{1,3}\s*$"},
    )
    tap_over_tcp: bool = _doc(
        "Also serve /status and /tap, which show message contents, on TCP addresses "
        "(by default only on Unix sockets, which file permissions protect).",
        default=False,
    )
    max_clients: int = _doc(
        "API connections open at once, on all addresses together (taps included); the "
        "next is answered 503 and closed.",
        default=64,
        minimum=1,
        maximum=10_000,
    )
    max_taps: int = _doc(
        "/tap clients at once; the next is answered 503 before the upgrade. Each one "
        "costs routing time (docs/observability.md has the figures). 0: no /tap; at "
        "most max_clients.",
        default=10,
        minimum=0,
        maximum=1000,
    )
    tap_buffer: Size = _doc(
        "Bound of each /tap client's buffer, in bytes (a message counts as 3 × its frame "
        "plus 256 B); what does not fit is dropped, counted and told to the client. "
        "A single larger message is still sent alone.",
        default=Size(4 * 2**20),
        minimum=64 * 2**10,
        maximum=2**30,
    )

    def __post_init__(self) -> None:
        # The bounds of each key are its fields' metadata (checked by the converter,
        # stated in the schema); this is the rule across two keys.
        if self.max_taps > self.max_clients:
            raise ValueError(
                f"max_taps must be at most max_clients ({self.max_clients}), got {self.max_taps}"
            )
        for address in self.listen:
            parse_listen(address)  # raises ValueError naming the problem
        try:
            mode = int(self.socket_mode, 8)
        except ValueError:
            raise ValueError(
                f'socket_mode: expected octal like "0660", got "{self.socket_mode}"'
            ) from None
        if not 0 <= mode <= 0o777:
            raise ValueError(f'socket_mode: expected octal 0000-0777, got "{self.socket_mode}"')

    @property
    def mode(self) -> int:
        """``socket_mode`` as a number."""
        return int(self.socket_mode, 8)


def parse_listen(address: str) -> tuple[str, str | int]:
    """``("unix", PATH)`` or ``(HOST, PORT)`` for one ``[daemon.api] listen`` entry.

    Raises ``ValueError`` with what is wrong: a Unix path must be absolute, a TCP
    address needs a host and a port from 1 to 65535.
    """
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError(f'listen: "{address}": a Unix socket path must be absolute')
        return "unix", path
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f'listen: "{address}": expected "HOST:PORT" or "unix:PATH"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f'listen: "{address}": the port must be 1-65535')
    return host, int(port)


@dataclass
class DaemonSection:
    """``[daemon]``: process-wide settings."""

    log_level: Literal["debug", "info", "warning", "error"] = _doc(
        "Lowest log level written.", default="info"
    )
    log_format: Literal["auto", "json", "console", "journal"] = _doc(
        "auto: journal under journald (JOURNAL_STREAM set and journald's socket "
        "/run/systemd/journal/socket there), else console on a TTY, JSON otherwise. "
        "journal: native journal entries — MESSAGE the readable line (event first, "
        "then key=value), PRIORITY from the level, each event key its own upper-case "
        "field (CONNECTION=exchange), tracebacks in TRACEBACK; an event the socket "
        "refuses goes to stderr as a JSON line.",
        default="auto",
    )
    shutdown_timeout: Duration = _doc(
        "Drain budget on SIGTERM: handlers drain for up to half of it, the dead-letter "
        "handlers write what they left in the rest.",
        default=Duration(10.0),
    )
    unmatched: str | None = _doc(
        "Handler for messages no route matched, frames with a `$` key included (default: "
        "counted and logged at info, at most once a second).",
        default=None,
    )
    dead_letter: str | None = _doc(
        "Handler for undecodable frames and for what handlers or shutdown gave up on.",
        default=None,
    )
    plugin_paths: list[str] = _doc(
        "Extra folders searched for plugin modules (refused if writable by others).",
        default_factory=list,
    )
    event_loop: Literal["asyncio", "uvloop"] = _doc(
        'The event loop: asyncio, or uvloop (the "uvloop" extra: 20-30% less CPU '
        "per frame at moderate rates, no gain under a flood). Read at start only: "
        "a reload that changes it is logged and needs a restart.",
        default="asyncio",
    )
    memory_budget: Size = _doc(
        "All handler queues together (each message counted per queue it is in, by the "
        "estimate of queue_bytes): at or above it every reader and source pauses until "
        "the handlers drain below it. A safety net above the per-handler bounds: it "
        "never drops.",
        default=Size(512 * 2**20),
        minimum=1,
    )
    api: ApiSection = _doc("The operator's API: [daemon.api] below.", default_factory=ApiSection)

    def __post_init__(self) -> None:
        if self.memory_budget < 1:
            raise ValueError(f"memory_budget must be at least 1B, got {self.memory_budget}B")
        if self.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError(
                'event_loop "uvloop" needs the uvloop package: pip install "wsroute[uvloop]"'
            )


#: ``connections.NAME.tls``: the public :class:`~wsroute.tls.TlsOptions`.
TlsSection = TlsOptions


@dataclass
class ReconnectSection:
    """``connections.NAME.reconnect``: capped exponential backoff with jitter."""

    initial: Duration = _doc("First delay after a failure.", default=Duration(0.5), above=0)
    max: Duration = _doc("Cap on the delay.", default=Duration(30.0))
    factor: float = _doc("Growth of the delay per failed attempt.", default=2.0, minimum=1.0)
    jitter: float = _doc(
        "Share of each delay drawn at random: the delay is uniform in "
        "[d × (1 − jitter), d]; 1.0 is full jitter.",
        default=0.5,
        minimum=0.0,
        maximum=1.0,
    )
    reset_after: Duration = _doc(
        "A connection that stayed up this long resets the backoff to `initial`.",
        default=Duration(10.0),
    )

    def __post_init__(self) -> None:
        if self.initial <= 0:
            raise ValueError("initial must be above 0")
        if self.max < self.initial:
            raise ValueError("max must not be below initial")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"factor must be a number of at least 1.0, got {self.factor!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0.0 and 1.0, got {self.jitter!r}")


@dataclass
class StructSection:
    """``struct = { format = "<i", values = [2] }``: a packed binary header."""

    format: str = _doc("A Python struct format string, e.g. `<i` or `<ib`.")
    values: list[Any] = _doc("Values packed with the format.", default_factory=list)

    def __post_init__(self) -> None:
        try:
            _struct.pack(self.format, *self.values)
        except _struct.error as exc:
            raise ValueError(
                f"cannot pack {self.values!r} with format {show_value(self.format)}: {exc}"
            ) from exc


@dataclass
class ExpectSection:
    """``expect = { key = 2, timeout = "5s" }``: wait for a reply with this route key."""

    key: str | int | float | bool = _doc("The route key of the awaited reply.")
    timeout: Duration = _doc("No such reply in time: reconnect.", default=Duration(5.0), above=0)

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be above 0")


@dataclass
class _FrameFields:
    json: Any = _doc("A JSON value: alone a text frame, after `struct` the body.", default=None)
    struct: StructSection | None = _doc("A packed binary header.", default=None)
    text: str | None = _doc("A text frame, sent as is.", default=None)
    raw: bytes | None = _doc('A binary frame written as hex: "02 00 00 00".', default=None)

    def outgoing(self) -> Outgoing:
        """The frame this step sends."""
        return Outgoing.build(
            json=self.json,
            struct=(self.struct.format, self.struct.values) if self.struct else None,
            text=self.text,
            raw=self.raw,
        )

    def _frame_kinds(self) -> list[str]:
        kinds = []
        if self.json is not None or self.struct is not None:
            kinds.append("json/struct")
        if self.text is not None:
            kinds.append("text")
        if self.raw is not None:
            kinds.append("raw")
        return kinds


@dataclass
class StepSection(_FrameFields):
    """One ``[[connections.NAME.on_connect]]`` step: a frame, a pause or an expect."""

    pause: Duration | None = _doc("Wait this long before the next step.", default=None)
    expect: ExpectSection | None = _doc("Wait for a reply before the next step.", default=None)

    def __post_init__(self) -> None:
        kinds = self._frame_kinds()
        if self.pause is not None:
            kinds.append("pause")
        if self.expect is not None:
            kinds.append("expect")
        if len(kinds) != 1:
            raise ValueError(
                "a step is exactly one of: json, struct (+ json), text, raw, pause, expect"
                + (f"; got {' and '.join(kinds)}" if kinds else "")
            )

    @property
    def is_frame(self) -> bool:
        return self.pause is None and self.expect is None


@dataclass
class EverySection(_FrameFields):
    """One ``[[connections.NAME.every]]``: a frame sent periodically while connected."""

    interval: Duration = _doc("Time between two sends.", default=Duration(30.0), above=0)

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("interval must be above 0")
        kinds = self._frame_kinds()
        if len(kinds) != 1:
            raise ValueError(
                "a periodic frame is exactly one of: json, struct (+ json), text, raw"
                + (f"; got {' and '.join(kinds)}" if kinds else "")
            )


@dataclass
class CloseFrameSection(_FrameFields):
    """One ``[[connections.NAME.on_close]]``: a frame sent before a deliberate close."""

    def __post_init__(self) -> None:
        kinds = self._frame_kinds()
        if len(kinds) != 1:
            raise ValueError(
                "a closing frame is exactly one of: json, struct (+ json), text, raw"
                + (f"; got {' and '.join(kinds)}" if kinds else "")
            )


def _has_userinfo(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return False  # a broken url is reported by its own check
    return parts.username is not None or parts.password is not None


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_PROXY_SCHEMES = ("http://", "https://", "socks5://", "socks5h://", "socks4://")


def check_ws_url(url: str, key: str = "url") -> None:
    """Refuse a WebSocket URL that a connection could not open: what websockets'
    own parser refuses too (a user without a password, a fragment...), said
    without the URL's credentials."""
    from websockets.exceptions import InvalidURI
    from websockets.uri import parse_uri

    check_url(url, ("ws", "wss"), key=key)
    parts = urlsplit(url)
    if parts.fragment:
        raise OptionError(key, f'must not have a #fragment, got "{redact_url(url)}"')
    if parts.username is not None and parts.password is None:
        raise OptionError(key, f'user info must be user:password@, got "{redact_url(url)}"')
    try:
        parse_uri(url)
    except (InvalidURI, ValueError):  # percent-decoding, IDNA: whatever else it refuses
        raise OptionError(key, f'is not a usable WebSocket URL, got "{redact_url(url)}"') from None


@dataclass
class ConnectionSection:
    """``[connections.NAME]``: one upstream WebSocket, kept connected."""

    url: str = _doc("ws:// or wss:// URL of the upstream.", schema={"pattern": "^wss?://"})
    codec: str = _doc(
        "A [codecs.NAME] table or a built-in codec name.", default="json", schema={"minLength": 1}
    )
    headers: dict[str, str] = _doc(
        "Extra HTTP headers of the handshake (values never logged).", default_factory=dict
    )
    ping_interval: Duration = _doc("Keepalive ping period; 0 disables.", default=Duration(20.0))
    ping_timeout: Duration = _doc(
        "No pong in this long: the connection is dead.", default=Duration(20.0)
    )
    idle_timeout: Duration = _doc(
        "No frame for this long: reconnect. 0 disables.", default=Duration(0.0)
    )
    max_frame_size: Size = _doc(
        "Larger frames close the connection (1009). There is no unlimited: 0 is refused.",
        default=Size(2**20),
        minimum=1,
        bound_note="there is no unlimited",
    )
    open_timeout: Duration = _doc("TCP + TLS + handshake budget.", default=Duration(10.0))
    close_timeout: Duration = _doc(
        "How long to wait for the peer's close frame.", default=Duration(2.0)
    )
    subprotocols: list[str] = _doc("Offered subprotocols.", default_factory=list)
    compression: Literal["deflate", "none"] = _doc("permessage-deflate or none.", default="deflate")
    proxy: str = _doc(
        'none (proxy variables ignored) | env (HTTPS_PROXY...) | "http://..." | "socks5://..."',
        default="none",
        schema={"pattern": "^(none|env|(https?|socks5h?|socks4)://.*)$"},
    )
    redirects: Literal["same-origin", "any", "none"] = _doc(
        "HTTP redirects of the handshake (10 at most, within open_timeout): same-origin "
        "(followed only to the same scheme, host and port; others refused) | any (followed "
        "anywhere, but headers and the URL's user:password are sent only to the url's own "
        "origin) | none (never followed). wss:// is never redirected to ws://. A refused "
        "redirect is a failed attempt: logged, then the reconnect backoff.",
        default="same-origin",
    )
    log_query_keys: list[str] = _doc(
        "Query parameters of url whose values the logs show; every other query value "
        'is logged as "***".',
        default_factory=list,
    )
    transport: Literal["websockets", "picows"] = _doc(
        "The WebSocket client: websockets (wsroute's frame reader over websockets' protocol). "
        '"picows" was removed and is refused.',
        default="websockets",
    )
    tls: TlsSection = _doc("TLS options.", default_factory=TlsSection)
    reconnect: ReconnectSection = _doc(
        "Backoff between attempts.", default_factory=ReconnectSection
    )
    on_connect: list[StepSection] = _doc(
        "Steps replayed in order after every (re)connect.", default_factory=list
    )
    every: list[EverySection] = _doc("Periodic frames while connected.", default_factory=list)
    on_close: list[CloseFrameSection] = _doc(
        "Frames sent in order before a deliberate close (daemon stop, a reload that "
        "restarts this connection, a library close()), then the close frame; never when "
        "the peer is already gone. All of them within close_timeout.",
        default_factory=list,
    )

    def __post_init__(self) -> None:
        check_ws_url(self.url)
        if self.proxy not in ("none", "env"):
            if not self.proxy.startswith(_PROXY_SCHEMES):
                raise ValueError(
                    f'proxy must be "none", "env" or a proxy URL (http://, socks5://), '
                    f'got "{redact_url(self.proxy)}"'
                )
            check_url(self.proxy, (s.partition(":")[0] for s in _PROXY_SCHEMES), key="proxy")
        if self.codec == "":
            raise ValueError("codec must not be empty")
        if self.max_frame_size < 1:
            # 0 would mean "unlimited" to websockets: refused rather than meant silently.
            raise ValueError("max_frame_size must be at least 1B (there is no unlimited), got 0")
        if self.transport == "picows":
            # Removed: slower than the default transport, and not at parity with it
            # (docs/architecture.md). Refused with the replacement, not dropped silently.
            raise ValueError(
                'transport "picows" was removed: use transport = "websockets" (the default)'
            )
        for name, value in self.headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"headers: {show_value(name)} is not a valid HTTP header name")
            if "\r" in value or "\n" in value:
                # The value itself is not shown: it is often a secret.
                raise ValueError(f"headers: the value of {name} must not contain a line break")
            if not _HEADER_VALUE.fullmatch(value):
                # What websockets refuses when the connection opens: refused here instead.
                raise ValueError(
                    f"headers: the value of {name} must be Latin-1 text without control characters"
                )
        if any(name.lower() == "authorization" for name in self.headers) and _has_userinfo(
            self.url
        ):
            # Both would be sent: two Authorization headers, which servers take differently.
            raise ValueError(
                "headers: Authorization is set twice, by headers and by the url's "
                "user:password (sent as Basic): keep one of them"
            )


@dataclass
class CodecSection:
    """``[codecs.NAME]``: a codec plugin and its options."""

    type: str = _doc("The codec plugin: json | struct | text | bytes | an installed codec.")
    options: dict[str, Any] = field(default_factory=dict, metadata={"doc": "The codec's options."})

    def __post_init__(self) -> None:
        if not self.type:
            raise ValueError("type must not be empty")


@dataclass
class RouteSection:
    """``[routes.NAME]``: which messages go to which handlers."""

    handlers: list[str] = _doc(
        "Handlers that receive the matching messages.", schema={"minItems": 1}
    )
    connection: str | None = _doc(
        "Only messages from this connection (or source); any when left out.", default=None
    )
    key: Key | list[Key] = _doc(
        'One route key or a list; any key (but not "$connected"/"$disconnected") when left out.',
        default=None,
        schema={"minItems": 1},  # an array only: [] matches nothing
    )

    def __post_init__(self) -> None:
        if not self.handlers:
            raise ValueError("handlers must name at least one handler")
        seen: set[str] = set()
        for name in self.handlers:
            if name in seen:
                raise ValueError(f"handlers lists {show_value(name)} twice")
            seen.add(name)
        if isinstance(self.key, list) and not self.key:
            raise ValueError(
                "key is an empty list, which matches nothing; leave key out for any key"
            )
        for key in self.keys or ():
            if isinstance(key, str) and key.startswith("$") and key not in LIFECYCLE_KEYS:
                raise ValueError(
                    f'key {show_value(key)}: keys starting with "$" belong to the daemon '
                    f"(only {' and '.join(map(show_value, LIFECYCLE_KEYS))} can be routed); "
                    "an upstream frame with such a key is unmatched"
                )

    @property
    def keys(self) -> tuple[Key, ...] | None:
        """The route keys as a tuple, or ``None`` for any key."""
        if self.key is None:
            return None
        return tuple(self.key) if isinstance(self.key, list) else (self.key,)


@dataclass
class BatchSection:
    """A handler's ``batch = { max = N, wait = "20ms" }``: how its ``handle_batch`` is fed."""

    max: int = _doc("Most messages in one handle_batch() call.", default=100, minimum=1)
    wait: Duration = _doc(
        "How long a worker holding fewer than max messages waits for more before it "
        "calls handle_batch(); 0 sends what is queued at once.",
        default=Duration(0.02),
    )

    def __post_init__(self) -> None:
        if self.max < 1:
            raise ValueError(f"max must be at least 1, got {self.max}")
        if self.max > 100_000:
            raise ValueError(f"max must be at most 100000, got {self.max}")
        if self.wait < 0:
            raise ValueError(f"wait must not be negative, got {self.wait}")


@dataclass
class HandlerSection:
    """``[handlers.NAME]``: a handler plugin, its options and its delivery settings."""

    plugin: str = _doc('An entry-point name, or "package.module:attr".')
    queue: int = _doc("Bounded queue size.", default=10000, minimum=1)
    queue_bytes: Size = _doc(
        "Bound on the bytes queued, estimated per message as 3 × its raw frame "
        "(the frame, and its decoded body taken as twice the frame). A queue "
        "takes a message while below both bounds: one message larger than this is "
        "still queued alone.",
        default=Size(64 * 2**20),
        minimum=1,
    )
    overflow: Literal["block", "drop-oldest", "drop-newest"] = _doc(
        "Full queue (queue or queue_bytes reached): block (backpressure to the socket) | "
        "drop-oldest | drop-newest.",
        default="block",
    )
    concurrency: int = _doc("Worker tasks of this handler.", default=1, minimum=1)
    timeout: Duration = _doc("Budget per message attempt; 0 disables.", default=Duration(5.0))
    retries: int = _doc(
        "Attempts after the first, with backoff, before dead-lettering. Only failures "
        "(the engine refused the message) count: an outage (the engine unavailable) is "
        "waited out.",
        default=3,
        minimum=0,
    )
    outage_timeout: Duration | None = _doc(
        "How long an outage of the handler's engine may last before the messages it "
        "holds are dead-lettered (reason outage); unset: wait as long as it takes.",
        default=None,
        above=0,
    )
    dead_letter: str | None = _doc(
        "Handler for what this one gives up on (default: [daemon] dead_letter).", default=None
    )
    batch: BatchSection | None = _doc(
        "Deliver in batches to the plugin's handle_batch(messages): "
        '{ max = 100, wait = "20ms" }. Only for a plugin that has handle_batch; '
        "timeout bounds each call, retries and dead letters stay per message.",
        default=None,
    )
    options: dict[str, Any] = field(
        default_factory=dict, metadata={"doc": "The plugin's own options."}
    )

    def __post_init__(self) -> None:
        if not self.plugin:
            raise ValueError("plugin must not be empty")
        if self.queue < 1:
            raise ValueError(f"queue must be at least 1, got {self.queue}")
        if self.queue > 10_000_000:
            raise ValueError(f"queue must be at most 10000000, got {self.queue}")
        if self.queue_bytes < 1:
            raise ValueError(f"queue_bytes must be at least 1B, got {self.queue_bytes}B")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.concurrency > 1000:
            raise ValueError(f"concurrency must be at most 1000, got {self.concurrency}")
        if self.retries < 0:
            raise ValueError(f"retries must not be negative, got {self.retries}")
        if self.retries > 1000:
            raise ValueError(f"retries must be at most 1000, got {self.retries}")
        if self.outage_timeout is not None and self.outage_timeout <= 0:
            raise ValueError("outage_timeout must be above 0 (leave it out to wait forever)")


@dataclass
class SourceSection:
    """``[sources.NAME]``: a producer of frames other than a WebSocket (a Redis stream).

    Sources share the connection name space: routes name them in ``connection``.
    """

    type: str = _doc('The source plugin, e.g. "redis-stream".')
    codec: str = _doc(
        "A [codecs.NAME] table or a built-in codec name: entries carry raw frames.", default="json"
    )
    dead_letter: str | None = _doc(
        "Handler for what the source itself gives up on (default: [daemon] dead_letter).",
        default=None,
    )
    options: dict[str, Any] = field(
        default_factory=dict, metadata={"doc": "The source plugin's own options."}
    )

    def __post_init__(self) -> None:
        if not self.type:
            raise ValueError("type must not be empty")


@dataclass
class Config:
    """A whole, validated config file."""

    daemon: DaemonSection = field(default_factory=DaemonSection)
    connections: dict[str, ConnectionSection] = field(default_factory=dict)
    codecs: dict[str, CodecSection] = field(default_factory=dict)
    routes: dict[str, RouteSection] = field(default_factory=dict)
    handlers: dict[str, HandlerSection] = field(default_factory=dict)
    sources: dict[str, SourceSection] = field(default_factory=dict)
    path: str | None = None
    #: What is legal but probably a mistake (a handler nothing feeds). Not part of equality.
    warnings: list[ConfigIssue] = field(default_factory=list, compare=False)
    #: Key path → the line of the text that sets it, for the plugin phase's errors.
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)


#: The top-level tables of a config file.
SECTIONS = ("daemon", "connections", "sources", "codecs", "routes", "handlers")
#: The top-level tables whose keys are names the user chooses: ``[connections.NAME]``.
NAMED_SECTIONS = ("connections", "sources", "codecs", "routes", "handlers")
#: Codec plugin names a connection may use without a ``[codecs.NAME]`` table.
BUILTIN_CODECS = ("json", "struct", "text", "bytes")
