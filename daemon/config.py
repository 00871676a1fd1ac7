"""The TOML config: typed sections and the loader.

SCHEMA PART (pinned): the dataclasses below are what the rest of the daemon
consumes. Past the loader there are no ``.get()`` chains: only these objects.
"""

from __future__ import annotations

import struct as _struct
from dataclasses import dataclass, field
from typing import Any, Literal

from .plugin import Duration, Key, Outgoing, Size

DELIVERY_KEYS = ("queue", "overflow", "concurrency", "timeout", "retries", "dead_letter")
LIFECYCLE_KEYS = ("$connected", "$disconnected")


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


@dataclass
class DaemonSection:
    """``[daemon]``: process-wide settings."""

    log_level: Literal["debug", "info", "warning", "error"] = _doc(
        "Lowest log level written.", default="info"
    )
    log_format: Literal["auto", "json", "console"] = _doc(
        "auto: console on a TTY, JSON otherwise (journald).", default="auto"
    )
    shutdown_timeout: Duration = _doc(
        "Drain budget on SIGTERM; what is left is dead-lettered.", default=Duration(10.0)
    )
    unmatched: str | None = _doc(
        "Handler for messages no route matched (default: counted and logged at debug).",
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


@dataclass
class TlsSection:
    """``connections.NAME.tls``: certificates for ``wss://`` upstreams."""

    ca_file: str = _doc("CA bundle to verify the server with (default: system store).", default="")
    cert_file: str = _doc("Client certificate (PEM) for mutual TLS.", default="")
    key_file: str = _doc("Private key of the client certificate.", default="")
    verify: bool = _doc(
        "Verify the server certificate and host name. false is logged loudly.", default=True
    )

    def __post_init__(self) -> None:
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file")


@dataclass
class ReconnectSection:
    """``connections.NAME.reconnect``: capped exponential backoff with jitter."""

    initial: Duration = _doc("First delay after a failure.", default=Duration(0.5))
    max: Duration = _doc("Cap on the delay.", default=Duration(30.0))
    factor: float = _doc("Growth of the delay per failed attempt.", default=2.0)
    jitter: float = _doc(
        "Share of each delay drawn at random: the delay is uniform in "
        "[d × (1 − jitter), d]; 1.0 is full jitter.",
        default=0.5,
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
        if self.factor < 1:
            raise ValueError("factor must be at least 1.0")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0.0 and 1.0")


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
                f"struct: cannot pack {self.values!r} with format {self.format!r}: {exc}"
            ) from exc


@dataclass
class ExpectSection:
    """``expect = { key = 2, timeout = "5s" }``: wait for a reply with this route key."""

    key: str | int | float | bool = _doc("The route key of the awaited reply.")
    timeout: Duration = _doc("No such reply in time: reconnect.", default=Duration(5.0))


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

    interval: Duration = _doc("Time between two sends.", default=Duration(30.0))

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("interval must be above 0")
        if len(self._frame_kinds()) != 1:
            raise ValueError("every needs exactly one of: json, struct (+ json), text, raw")


@dataclass
class ConnectionSection:
    """``[connections.NAME]``: one upstream WebSocket, kept connected."""

    url: str = _doc("ws:// or wss:// URL of the upstream.")
    codec: str = _doc("A [codecs.NAME] table or a built-in codec name.", default="json")
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
    max_frame_size: Size = _doc("Larger frames close the connection (1009).", default=Size(2**20))
    open_timeout: Duration = _doc("TCP + TLS + handshake budget.", default=Duration(10.0))
    close_timeout: Duration = _doc(
        "How long to wait for the peer's close frame.", default=Duration(2.0)
    )
    subprotocols: list[str] = _doc("Offered subprotocols.", default_factory=list)
    compression: Literal["deflate", "none"] = _doc("permessage-deflate or none.", default="deflate")
    proxy: str = _doc(
        'none (proxy variables ignored) | env (HTTPS_PROXY...) | "http://..." | "socks5://..."',
        default="none",
    )
    transport: Literal["websockets"] = _doc("The WebSocket client library.", default="websockets")
    tls: TlsSection = _doc("TLS options.", default_factory=TlsSection)
    reconnect: ReconnectSection = _doc(
        "Backoff between attempts.", default_factory=ReconnectSection
    )
    on_connect: list[StepSection] = _doc(
        "Steps replayed in order after every (re)connect.", default_factory=list
    )
    every: list[EverySection] = _doc("Periodic frames while connected.", default_factory=list)

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"url must start with ws:// or wss://, got {self.url!r}")
        if self.proxy not in ("none", "env") and not self.proxy.startswith(
            ("http://", "https://", "socks5://", "socks5h://", "socks4://")
        ):
            raise ValueError(
                f'proxy must be "none", "env" or a proxy URL (http://, socks5://), '
                f"got {self.proxy!r}"
            )


@dataclass
class CodecSection:
    """``[codecs.NAME]``: a codec plugin and its options."""

    type: str = _doc("The codec plugin: json | struct | text | bytes | an installed codec.")
    options: dict[str, Any] = field(default_factory=dict, metadata={"doc": "The codec's options."})


@dataclass
class RouteSection:
    """``[routes.NAME]``: which messages go to which handlers."""

    handlers: list[str] = _doc("Handlers that receive the matching messages.")
    connection: str | None = _doc(
        "Only messages from this connection (or source); any when left out.", default=None
    )
    key: Key | list[Key] = _doc(
        'One route key or a list; any key (but not "$connected"/"$disconnected") when left out.',
        default=None,
    )

    @property
    def keys(self) -> tuple[Key, ...] | None:
        """The route keys as a tuple, or ``None`` for any key."""
        if self.key is None:
            return None
        return tuple(self.key) if isinstance(self.key, list) else (self.key,)


@dataclass
class HandlerSection:
    """``[handlers.NAME]``: a handler plugin, its options and its delivery settings."""

    plugin: str = _doc('An entry-point name, or "package.module:attr".')
    queue: int = _doc("Bounded queue size.", default=10000)
    overflow: Literal["block", "drop-oldest", "drop-newest"] = _doc(
        "Full queue: block (backpressure to the socket) | drop-oldest | drop-newest.",
        default="block",
    )
    concurrency: int = _doc("Worker tasks of this handler.", default=1)
    timeout: Duration = _doc("Budget per message attempt; 0 disables.", default=Duration(5.0))
    retries: int = _doc("Attempts after the first, with backoff, before dead-lettering.", default=3)
    dead_letter: str | None = _doc(
        "Handler for what this one gives up on (default: [daemon] dead_letter).", default=None
    )
    options: dict[str, Any] = field(
        default_factory=dict, metadata={"doc": "The plugin's own options."}
    )

    def __post_init__(self) -> None:
        if self.queue < 1:
            raise ValueError("queue must be at least 1")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.retries < 0:
            raise ValueError("retries must not be negative")


@dataclass
class Config:
    """A whole, validated config file."""

    daemon: DaemonSection = field(default_factory=DaemonSection)
    connections: dict[str, ConnectionSection] = field(default_factory=dict)
    codecs: dict[str, CodecSection] = field(default_factory=dict)
    routes: dict[str, RouteSection] = field(default_factory=dict)
    handlers: dict[str, HandlerSection] = field(default_factory=dict)
    path: str | None = None
