"""The TOML config: typed sections and the loader.

SCHEMA PART (pinned): the dataclasses below are what the rest of the daemon
consumes. Past the loader there are no ``.get()`` chains: only these objects.

LOADER PART: :func:`load` / :func:`loads` turn a file into a :class:`Config`
in passes (TOML syntax, ``${...}`` interpolation, top-level keys and table
names, types, references between tables) and raise one
:class:`~wsroute.exceptions.ConfigError` listing every problem, each with its
dotted key path and, when it can be found, its line. :func:`reference_markdown`
renders the user-facing reference (docs/config.md) from the schema, so the
docs cannot drift from the code.

A ``__post_init__`` that rejects one key starts its message with that key's
name (``"queue must be at least 1, got 0"``): the loader then reports it at
the key's own path (``handlers.archive.queue: must be at least 1, got 0``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import re
import struct as _struct
import sys
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .exceptions import ConfigError, ConfigIssue
from .interpolate import Expansion, Interpolation, interpolate
from .logging import register_secrets
from .plugin import Duration, Key, Outgoing, Size
from .tls import TlsOptions
from .validate import (
    FieldDoc,
    convert,
    did_you_mean,
    field_docs,
    join_path,
)
from .validate import _show as show_value

DELIVERY_KEYS = (
    "queue",
    "queue_bytes",
    "overflow",
    "concurrency",
    "timeout",
    "retries",
    "dead_letter",
)
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
    )

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
    timeout: Duration = _doc("No such reply in time: reconnect.", default=Duration(5.0))

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

    interval: Duration = _doc("Time between two sends.", default=Duration(30.0))

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("interval must be above 0")
        kinds = self._frame_kinds()
        if len(kinds) != 1:
            raise ValueError(
                "a periodic frame is exactly one of: json, struct (+ json), text, raw"
                + (f"; got {' and '.join(kinds)}" if kinds else "")
            )


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


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
    max_frame_size: Size = _doc(
        "Larger frames close the connection (1009). There is no unlimited: 0 is refused.",
        default=Size(2**20),
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
        'The WebSocket client library: websockets, or picows (faster; needs the "fast" extra, '
        'compression = "none").',
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

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"url must start with ws:// or wss://, got {show_value(self.url)}")
        if self.proxy not in ("none", "env") and not self.proxy.startswith(
            ("http://", "https://", "socks5://", "socks5h://", "socks4://")
        ):
            raise ValueError(
                f'proxy must be "none", "env" or a proxy URL (http://, socks5://), '
                f"got {show_value(self.proxy)}"
            )
        if self.codec == "":
            raise ValueError("codec must not be empty")
        if self.max_frame_size < 1:
            # 0 would mean "unlimited" to websockets: refused rather than meant silently.
            raise ValueError("max_frame_size must be at least 1B (there is no unlimited), got 0")
        if self.transport == "picows":
            # picows has no permessage-deflate. Refused rather than dropped silently:
            # the connection would offer something else than the file says.
            if self.compression != "none":
                raise ValueError(
                    'transport "picows" cannot compress (no permessage-deflate): '
                    'add compression = "none" to this connection'
                )
            if importlib.util.find_spec("picows") is None:
                raise ValueError(
                    'transport "picows" needs the picows package: pip install "wsroute[fast]"'
                )
        for name, value in self.headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"headers: {show_value(name)} is not a valid HTTP header name")
            if "\r" in value or "\n" in value:
                # The value itself is not shown: it is often a secret.
                raise ValueError(f"headers: the value of {name} must not contain a line break")


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

    handlers: list[str] = _doc("Handlers that receive the matching messages.")
    connection: str | None = _doc(
        "Only messages from this connection (or source); any when left out.", default=None
    )
    key: Key | list[Key] = _doc(
        'One route key or a list; any key (but not "$connected"/"$disconnected") when left out.',
        default=None,
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
class HandlerSection:
    """``[handlers.NAME]``: a handler plugin, its options and its delivery settings."""

    plugin: str = _doc('An entry-point name, or "package.module:attr".')
    queue: int = _doc("Bounded queue size.", default=10000)
    queue_bytes: Size = _doc(
        "Bound on the bytes queued, estimated per message as 3 × its raw frame "
        "(the frame, and its decoded body taken as twice the frame). A queue "
        "takes a message while below both bounds: one message larger than this is "
        "still queued alone.",
        default=Size(64 * 2**20),
    )
    overflow: Literal["block", "drop-oldest", "drop-newest"] = _doc(
        "Full queue (queue or queue_bytes reached): block (backpressure to the socket) | "
        "drop-oldest | drop-newest.",
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
        if not self.plugin:
            raise ValueError("plugin must not be empty")
        if self.queue < 1:
            raise ValueError(f"queue must be at least 1, got {self.queue}")
        if self.queue_bytes < 1:
            raise ValueError(f"queue_bytes must be at least 1B, got {self.queue_bytes}B")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.retries < 0:
            raise ValueError(f"retries must not be negative, got {self.retries}")


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


# --------------------------------------------------------------------------- loader

#: The top-level tables of a config file.
SECTIONS = ("daemon", "connections", "sources", "codecs", "routes", "handlers")
#: The top-level tables whose keys are names the user chooses: ``[connections.NAME]``.
NAMED_SECTIONS = ("connections", "sources", "codecs", "routes", "handlers")
#: Codec plugin names a connection may use without a ``[codecs.NAME]`` table.
BUILTIN_CODECS = ("json", "struct", "text", "bytes")

_NAME = re.compile(r"[A-Za-z0-9_-]+")


def load(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raise :class:`ConfigError` listing every problem.

    ``environ`` is what ``${VAR}`` references read (default: ``os.environ``).
    Relative ``${file:...}`` paths start from the file's folder.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue("", f"cannot read config file {name}: {exc.strerror or exc}")],
            source=name,
        ) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [ConfigIssue("", f"not UTF-8 text (byte {exc.start})", line=line)], source=name
        ) from exc
    return loads(text, path=name, environ=environ)


def loads(
    text: str, *, path: str | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate config text; raise :class:`ConfigError` listing every problem.

    ``path`` is only recorded (``Config.path``, ``ConfigError.source``); its
    folder is where relative ``${file:...}`` paths start. What is legal but suspicious
    ends up in ``Config.warnings``. Loading the same text twice gives equal
    configs (dataclass equality), which is how a reload finds what changed.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_issue(exc, text)], source=path) from exc
    base_dir = os.path.dirname(os.path.abspath(path)) if path else None
    expanded = interpolate(document, os.environ if environ is None else environ, base_dir=base_dir)
    register_secrets(resolved_secrets(expanded))
    build_issues: list[ConfigIssue] = []
    config = _build(expanded.document, build_issues)
    issues = expanded.issues + _without_follow_ups(build_issues, expanded.failed)
    if issues or config is None:
        raise ConfigError(_finish(issues, text, expanded.expansions), source=path)
    config.path = path
    config.warnings = _finish(_warnings(config), text, ())
    return config


_AUTH_HEADERS = ("authorization", "proxy-authorization")
#: Query parameter names whose values are secrets: masked in every log line, not only in URLs.
_SECRET_QUERY_WORDS = (
    "token",
    "key",
    "secret",
    "pass",
    "pwd",
    "auth",
    "sig",
    "session",
    "jwt",
    "access",
    "credential",
    "cookie",
)


def resolved_secrets(expanded: Interpolation) -> list[str]:
    """Every secret value of an interpolated document, to register for masking in logs.

    What ``${file:...}`` and ``${credential:...}`` read anywhere; of each
    connection, the header values (whole, what ``${VAR}`` put in them, and in
    ``Authorization`` the credential after its scheme, e.g. ``Bearer``), the user and password
    of the URL (as written, decoded, and as the Basic ``Authorization`` value),
    and the values of secret-looking query parameters not in ``log_query_keys``.
    Plugin options marked secret are registered when they are built.
    """
    values: list[str] = []
    for expansion in expanded.expansions:
        values.extend(expansion.secrets)
        if ".headers." in expansion.path and expansion.path.startswith("connections."):
            values.extend(expansion.substituted)
    connections = expanded.document.get("connections")
    for table in connections.values() if isinstance(connections, dict) else ():
        if not isinstance(table, dict):
            continue
        headers = table.get("headers")
        for name, value in headers.items() if isinstance(headers, dict) else ():
            if isinstance(value, str):
                values.append(value)
                scheme, _, credential = value.partition(" ")
                if str(name).lower() in _AUTH_HEADERS and scheme.isalpha():
                    values.append(credential.strip())
        url, keep = table.get("url"), table.get("log_query_keys")
        if isinstance(url, str):
            values.extend(_url_secrets(url, keep if isinstance(keep, list) else []))
    return values


def _url_secrets(url: str, keep: list[Any]) -> list[str]:
    from urllib.parse import parse_qsl, unquote, urlsplit

    from websockets.headers import build_authorization_basic

    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return []
    values: list[str] = []
    for raw in (user, password):
        if raw:
            values += [raw, unquote(raw)]
    if user is not None and password is not None:
        basic = build_authorization_basic(unquote(user), unquote(password))
        values += [basic, basic.partition(" ")[2]]
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in keep and any(word in name.lower() for word in _SECRET_QUERY_WORDS):
            values.append(value)
    return values


def codec_reference(config: Config, connection: str) -> tuple[str, dict[str, Any]]:
    """The codec plugin name and options table a connection uses.

    A ``[codecs.NAME]`` table named by the connection's ``codec`` wins (even
    over a built-in name); otherwise ``codec`` is itself a plugin name (a
    built-in or an installed codec) used with no options. Whether that plugin
    exists is checked when plugins are loaded, not here. ``KeyError`` for an
    unknown connection. Sources are looked up too: they share the name space.
    """
    section = config.connections.get(connection) or config.sources[connection]
    name = section.codec
    table = config.codecs.get(name)
    if table is not None:
        return table.type, table.options
    return name, {}


def unchanged_sources(old: Config, new: Config) -> set[str]:
    """Names of sources a reload can keep running: same settings, same codec table."""
    return {
        name
        for name, section in new.sources.items()
        if old.sources.get(name) == section
        and codec_reference(old, name) == codec_reference(new, name)
    }


def unchanged_connections(old: Config, new: Config) -> set[str]:
    """Names of connections a reload can keep open: same settings, same codec table."""
    return {
        name
        for name, section in new.connections.items()
        if old.connections.get(name) == section
        and codec_reference(old, name) == codec_reference(new, name)
    }


def _syntax_issue(exc: tomllib.TOMLDecodeError, text: str) -> ConfigIssue:
    message = str(exc)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if match:
        reason = message[: match.start()]
        return ConfigIssue(
            "", f"TOML syntax error at column {match.group(2)}: {reason}", line=int(match.group(1))
        )
    match = re.search(r"\s*\(at end of document\)$", message)
    if match:
        return ConfigIssue(
            "",
            f"TOML syntax error at the end of the file: {message[: match.start()]}",
            line=max(1, len(text.splitlines())),
        )
    return ConfigIssue("", f"TOML syntax error: {message}")


def _build(document: dict[str, Any], issues: list[ConfigIssue]) -> Config | None:
    """Types and references; ``None`` when anything is wrong (``issues`` says what)."""
    for key in document:
        if key not in SECTIONS:
            issues.append(
                ConfigIssue(join_path("", key), f"unknown key{did_you_mean(key, SECTIONS)}")
            )
    tables = {section: _named_tables(document, section, issues) for section in NAMED_SECTIONS}

    daemon = convert(DaemonSection, document.get("daemon", {}), "daemon", issues)
    connections = {
        name: convert(ConnectionSection, table, join_path("connections", name), issues)
        for name, table in tables["connections"].items()
    }
    codecs = {
        name: _codec_section(table, join_path("codecs", name), issues)
        for name, table in tables["codecs"].items()
    }
    routes = {
        name: convert(RouteSection, table, join_path("routes", name), issues)
        for name, table in tables["routes"].items()
    }
    handlers = {
        name: _handler_section(table, join_path("handlers", name), issues)
        for name, table in tables["handlers"].items()
    }
    sources = {
        name: _source_section(table, join_path("sources", name), issues)
        for name, table in tables["sources"].items()
    }
    _check_references(document, tables, issues)
    if issues:
        return None
    return Config(
        daemon=daemon,
        connections=connections,
        codecs=codecs,
        routes=routes,
        handlers=handlers,
        sources=sources,
    )


def _named_tables(
    document: dict[str, Any], section: str, issues: list[ConfigIssue]
) -> dict[str, dict[str, Any]]:
    """The ``[section.NAME]`` tables of one section, after checking their names."""
    raw = document.get(section, {})
    if not isinstance(raw, dict):
        issues.append(
            ConfigIssue(section, f"expected [{section}.NAME] tables, got {show_value(raw)}")
        )
        return {}
    tables: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        path = join_path(section, name)
        if name.startswith("$"):
            issues.append(ConfigIssue(path, 'names starting with "$" are reserved'))
        elif not _NAME.fullmatch(name):
            issues.append(ConfigIssue(path, 'invalid name: use only letters, digits, "_" and "-"'))
        if not isinstance(value, dict):
            issues.append(
                ConfigIssue(
                    path,
                    f"expected a table, got {show_value(value)} "
                    f"(each of {section} is a [{section}.NAME] table)",
                )
            )
            continue
        tables[name] = value
    return tables


def _codec_section(table: dict[str, Any], path: str, issues: list[ConfigIssue]) -> Any:
    # `type` picks the plugin; the plugin validates the rest when it is loaded.
    fields: dict[str, Any] = {"options": {k: v for k, v in table.items() if k != "type"}}
    if "type" in table:
        fields["type"] = table["type"]
    return convert(CodecSection, fields, path, issues)


def _handler_section(table: dict[str, Any], path: str, issues: list[ConfigIssue]) -> Any:
    # `plugin` and the delivery keys are the daemon's; the rest is the plugin's,
    # passed on untouched and validated against its Options when it is loaded.
    ours = ("plugin", *DELIVERY_KEYS)
    fields = {k: v for k, v in table.items() if k in ours}
    fields["options"] = {k: v for k, v in table.items() if k not in ours}
    return convert(HandlerSection, fields, path, issues)


def _source_section(table: dict[str, Any], path: str, issues: list[ConfigIssue]) -> Any:
    # `type`, `codec` and `dead_letter` are the daemon's; the rest is the plugin's.
    ours = ("type", "codec", "dead_letter")
    fields = {k: v for k, v in table.items() if k in ours}
    fields["options"] = {k: v for k, v in table.items() if k not in ours}
    return convert(SourceSection, fields, path, issues)


def _check_references(
    document: dict[str, Any],
    tables: dict[str, dict[str, dict[str, Any]]],
    issues: list[ConfigIssue],
) -> None:
    """Names that must exist. Runs on the raw tables so it reports even where types failed."""

    def names_in(section: str) -> list[str]:
        # Every name in the file counts, even one whose table is broken (reported already).
        raw = document.get(section)
        return list(raw) if isinstance(raw, dict) else []

    handlers = names_in("handlers")
    # Sources share the connection name space: a route's `connection` may name either.
    connections = names_in("connections") + names_in("sources")
    for name in names_in("sources"):
        if name in names_in("connections"):
            issues.append(
                ConfigIssue(
                    join_path("sources", name),
                    "a source cannot have the name of a connection (they share routes' names)",
                )
            )

    def need_handler(path: str, name: Any) -> None:
        if isinstance(name, str) and name not in handlers:
            issues.append(
                ConfigIssue(
                    path, f"no handler named {show_value(name)}{did_you_mean(name, handlers)}"
                )
            )

    daemon = document.get("daemon")
    if isinstance(daemon, dict):
        for key in ("unmatched", "dead_letter"):
            need_handler(join_path("daemon", key), daemon.get(key))
    for name, route in tables["routes"].items():
        path = join_path("routes", name)
        connection = route.get("connection")
        if isinstance(connection, str) and connection not in connections:
            issues.append(
                ConfigIssue(
                    join_path(path, "connection"),
                    f"no connection named {show_value(connection)}"
                    f"{did_you_mean(connection, connections)}",
                )
            )
        listed = route.get("handlers")
        if isinstance(listed, list):
            for i, handler in enumerate(listed):
                need_handler(join_path(join_path(path, "handlers"), i), handler)
    for name, source in tables["sources"].items():
        need_handler(
            join_path(join_path("sources", name), "dead_letter"), source.get("dead_letter")
        )
    for name, handler in tables["handlers"].items():
        path = join_path(join_path("handlers", name), "dead_letter")
        target = handler.get("dead_letter")
        if target == name:
            issues.append(ConfigIssue(path, "a handler cannot be its own dead letter"))
        else:
            need_handler(path, target)


def _warnings(config: Config) -> list[ConfigIssue]:
    """What is valid but most likely a mistake: tables that take part in nothing."""
    warnings: list[ConfigIssue] = []

    def warn(path: str, message: str) -> None:
        warnings.append(ConfigIssue(path, message, warning=True))

    fed = {name for route in config.routes.values() for name in route.handlers}
    fed.update(h.dead_letter for h in config.handlers.values() if h.dead_letter)
    fed.update(n for n in (config.daemon.dead_letter, config.daemon.unmatched) if n)
    fed.update(s.dead_letter for s in config.sources.values() if s.dead_letter)
    for name in config.handlers:
        if name not in fed:
            warn(
                join_path("handlers", name),
                "never receives messages: no route, dead_letter or unmatched names it",
            )

    wildcard = any(route.connection is None for route in config.routes.values())
    routed = {route.connection for route in config.routes.values()}
    for name, connection in config.connections.items():
        path = join_path("connections", name)
        if not wildcard and name not in routed:
            fate = (
                f'all go to the unmatched handler "{config.daemon.unmatched}"'
                if config.daemon.unmatched
                else "are only counted as unmatched"
            )
            warn(path, f"no route takes messages from this connection: they {fate}")
        codec = connection.codec
        if codec not in config.codecs and codec not in BUILTIN_CODECS:
            hint = did_you_mean(codec, [*config.codecs, *BUILTIN_CODECS])
            if hint:
                # Not an error: an installed codec plugin may be called that.
                warn(
                    join_path(path, "codec"),
                    f"{show_value(codec)} is neither a [codecs.NAME] table nor a built-in "
                    f"codec{hint}",
                )

    used = {connection.codec for connection in config.connections.values()}
    used.update(source.codec for source in config.sources.values())
    for name in config.codecs:
        if name not in used:
            warn(join_path("codecs", name), "no connection uses this codec")
    return warnings


# --- turning raw issues into what the user reads


def _without_follow_ups(issues: list[ConfigIssue], failed: Mapping[str, str]) -> list[ConfigIssue]:
    """Leave out errors that only repeat that a value could not be interpolated.

    A value whose ``${...}`` failed stays as written; a type or reference error
    at its path (or a ``__post_init__`` complaint quoting it) would only
    confuse, since the interpolation error already names the key.
    """
    if not failed:
        return issues
    kept = []
    for issue in issues:
        follow_up = False
        for path, template in failed.items():
            if _within(path, issue.path) or (
                _within(issue.path, path)
                and (show_value(template) in issue.message or repr(template) in issue.message)
            ):
                follow_up = True
                break
        if not follow_up:
            kept.append(issue)
    return kept


def _finish(
    issues: Iterable[ConfigIssue], text: str, expansions: Sequence[Expansion]
) -> list[ConfigIssue]:
    """Key paths refined, secrets redacted, one line each, line numbers added, sorted by line."""
    index = _line_index(text)
    done = []
    for issue in issues:
        issue = _refine_path(issue)
        message = _redact(issue, expansions)
        message = " ".join(message.split("\n"))
        line = issue.line if issue.line is not None else _line_in(index, issue.path)
        done.append(dataclasses.replace(issue, message=message, line=line))
    done.sort(key=lambda issue: issue.line if issue.line is not None else math.inf)
    return done


def _within(ancestor: str, path: str) -> bool:
    """Whether ``path`` is ``ancestor`` or lies inside it."""
    if not ancestor:
        return True
    return path == ancestor or path.startswith((ancestor + ".", ancestor + "["))


def _redact(issue: ConfigIssue, expansions: Sequence[Expansion]) -> str:
    """The issue's message with no interpolated value in it: it may be a secret.

    A whole value is shown as written (``"Bearer ${TOKEN}"``); anything left of
    a substituted piece becomes ``***``.
    """
    message = issue.message
    related = [e for e in expansions if _within(issue.path, e.path) or _within(e.path, issue.path)]
    for expansion in related:
        for shown, written in (
            (show_value(expansion.value), show_value(expansion.template)),
            (repr(expansion.value), repr(expansion.template)),
        ):
            message = message.replace(shown, written)
    for expansion in related:
        for piece in expansion.substituted:
            # Very short pieces ("1", "ws") would garble the message and reveal little.
            if len(piece) >= 4:
                message = message.replace(piece, "***")
    return message


def _refine_path(issue: ConfigIssue) -> ConfigIssue:
    """Move a ``__post_init__`` complaint about one key to that key's path.

    ``connections.x.reconnect: max must not be below initial`` becomes
    ``connections.x.reconnect.max: must not be below initial``.
    """
    cls = _dataclass_at(issue.path)
    if cls is None:
        return issue
    match = re.match(r"(\w+)(:? )", issue.message)
    if not match or match.group(1) not in {f.name for f in dataclasses.fields(cls)}:
        return issue
    return dataclasses.replace(
        issue, path=join_path(issue.path, match.group(1)), message=issue.message[match.end() :]
    )


def _dataclass_at(path: str) -> type | None:
    """The schema dataclass that describes the table at ``path``, if any."""
    if not path:
        return None
    tp: Any = Config
    for part in split_path(path):
        tp = _child_type(_table_arm(tp), part)
        if tp is None:
            return None
    tp = _table_arm(tp)
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _table_arm(tp: Any) -> Any:
    """``StructSection | None`` → ``StructSection``; other annotations unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tables = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if len(tables) == 1:
            return tables[0]
    return tp


def _child_type(tp: Any, part: str | int) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return typing.get_type_hints(tp).get(part) if isinstance(part, str) else None
    if origin is dict and isinstance(part, str):
        return args[1]
    if origin is list and isinstance(part, int):
        return args[0]
    return None


_PATH_PART = re.compile(r'\[(\d+)\]|\.?(?:"((?:[^"\\]|\\.)*)"|([A-Za-z0-9_-]+))')


def split_path(path: str) -> list[str | int]:
    """The parts of a dotted key path as :func:`~wsroute.validate.join_path` writes it.

    ``'routes.market.handlers[1]'`` → ``["routes", "market", "handlers", 1]``;
    quoted parts (``connections."a b"``) are unquoted.
    """
    parts: list[str | int] = []
    pos = 0
    while pos < len(path):
        match = _PATH_PART.match(path, pos)
        if not match or match.end() == pos:
            raise ValueError(f"not a key path: {path!r}")
        if match.group(1) is not None:
            parts.append(int(match.group(1)))
        elif match.group(2) is not None:
            parts.append(match.group(2).replace('\\"', '"'))
        else:
            parts.append(match.group(3))
        pos = match.end()
    return parts


# --- line numbers: a best-effort map from key paths to the lines that set them

_KEY_PART = re.compile(r"""\s*([A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')\s*""")


def line_of(text: str, path: str) -> int | None:
    """The line of TOML ``text`` where the key ``path`` is set, or its nearest table.

    Best effort, for error messages: a table header (``[connections.x]``), an
    array-of-tables header (``[[connections.x.on_connect]]``, counted for the
    ``[i]`` index), a ``key = value`` line; a key inside an inline table maps
    to the line of the inline table; a missing key to its table's header.
    """
    return _line_in(_line_index(text), path)


def _line_in(index: Mapping[str, int], path: str) -> int | None:
    if not path:
        return None
    if path in index:
        return index[path]
    # A table that has no header of its own (only [a.b.c] or dotted keys below it).
    inside = [line for p, line in index.items() if _within(path, p)]
    if inside:
        return min(inside)
    try:
        parts = split_path(path)
    except ValueError:
        return None
    while len(parts) > 1:
        parts.pop()
        ancestor = _join_parts(parts)
        if ancestor in index:
            return index[ancestor]
    return None


def _join_parts(parts: Sequence[str | int]) -> str:
    path = ""
    for part in parts:
        path = join_path(path, part)
    return path


def _line_index(text: str) -> dict[str, int]:
    index: dict[str, int] = {}
    tables: dict[str, int] = {}  # array-of-tables path → elements seen so far
    table = ""
    multiline: str | None = None  # the delimiter of an open multi-line string
    for number, line in enumerate(text.splitlines(), 1):
        if multiline is not None:
            if multiline in line:
                multiline = None
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            is_array = stripped.startswith("[[")
            parts = _key_parts(stripped, 2 if is_array else 1)
            if parts is None:
                continue
            table = _header_path(parts[0], tables, is_array)
            index.setdefault(table, number)
            continue
        parts = _key_parts(line, 0)
        if parts is None or not line[parts[1] :].startswith("="):
            continue
        index.setdefault(_join_parts([*split_path(table), *parts[0]]), number)
        value = line[parts[1] + 1 :]
        for delimiter in ('"""', "'''"):
            if value.count(delimiter) % 2 == 1:
                multiline = delimiter
    return index


def _key_parts(line: str, pos: int) -> tuple[list[str], int] | None:
    """A dotted TOML key at ``pos``: its unquoted parts and where it ends."""
    parts: list[str] = []
    while True:
        match = _KEY_PART.match(line, pos)
        if not match:
            return None
        token = match.group(1)
        if token[0] in "\"'":
            try:
                token = next(iter(tomllib.loads(f"{token} = 0")))
            except tomllib.TOMLDecodeError:
                return None
        parts.append(token)
        pos = match.end()
        if not line.startswith(".", pos):
            return parts, pos
        pos += 1


def _header_path(parts: Sequence[str], arrays: dict[str, int], is_array: bool) -> str:
    path = ""
    for i, part in enumerate(parts):
        path = join_path(path, part)
        if is_array and i == len(parts) - 1:
            count = arrays.get(path, 0)
            arrays[path] = count + 1
            path = join_path(path, count)
        elif path in arrays:
            # [a.b.c] after [[a.b]] belongs to the last element of a.b.
            path = join_path(path, arrays[path] - 1)
    return path


# --------------------------------------------------------------------------- reference

_REGENERATE = ".venv/bin/python -m wsroute.config --reference > docs/config.md"

# Where a generated type name would read badly.
_TYPE_TEXT = {
    (RouteSection, "key"): "route key or array of route keys (string, integer, number, boolean)",
    (ExpectSection, "key"): "route key (string, integer, number, boolean)",
    (StepSection, "json"): "any TOML value",
    (EverySection, "json"): "any TOML value",
}


def reference_markdown() -> str:
    """The config reference in Markdown, generated from the schema dataclasses.

    docs/config.md is this text; a test fails when they differ, so change the
    schema (types, defaults, ``doc`` metadata) or the prose here, then
    regenerate with ``python -m wsroute.config --reference > docs/config.md``.
    """
    out: list[str] = []
    add = out.append
    add(
        "<!-- Generated from daemon/config.py: do not edit by hand. Regenerate with\n"
        f"     {_REGENERATE}\n"
        "     (tests/test_config.py fails while this file and the code differ). -->\n"
    )
    add("# Configuration reference\n")
    add(
        "wsroute reads one TOML file: `wsroute run -c FILE` (default "
        "`/etc/wsroute/wsroute.toml`). `wsroute check -c FILE` validates it, loads every "
        "plugin and prints the route table without connecting anywhere. "
        "`config/wsroute.example.toml` is a commented example that uses every table.\n"
    )
    add("A config file has up to five top-level tables; any other top-level key is an error.\n")
    add("| Table | What it holds |\n|---|---|")
    add("| [`[daemon]`](#daemon) | process-wide settings |")
    add("| [`[connections.NAME]`](#connectionsname) | one upstream WebSocket, kept connected |")
    add("| [`[codecs.NAME]`](#codecsname) | a codec plugin and its options |")
    add("| [`[routes.NAME]`](#routesname) | which messages go to which handlers |")
    add("| [`[handlers.NAME]`](#handlersname) | a handler plugin, its options, its delivery |\n")

    add("## Errors and warnings\n")
    add(
        "The whole file is checked in passes (TOML syntax; interpolation; top-level keys "
        "and names; the type of every value; names that refer to other tables) and every "
        "problem is reported at once, one line each, with its dotted key path and, when "
        "it can be found, its line:\n"
    )
    add("```text")
    add('connections.exchange.reconnect.max: expected a duration like "30s", got -1 (line 14)')
    add('connections.exchange.ping_intervall: unknown key (did you mean "ping_interval"?) (line 9)')
    add('routes.market.handlers[1]: no handler named "printr" (did you mean "printer"?) (line 31)')
    add("```\n")
    add(
        "Array elements count from 0: `connections.exchange.on_connect[2].struct` is the "
        "third `[[connections.exchange.on_connect]]`. Unknown keys are errors, with a "
        "hint when a known key is close. A bad config makes `wsroute check` and "
        "`wsroute run` exit with 78 (EX_CONFIG); on a reload (SIGHUP) the daemon logs the "
        "errors and keeps running the old config.\n"
    )
    add("These are errors:\n")
    for line in (
        "a route's `connection` that is not a `[connections.NAME]` table;",
        "a name in a route's `handlers`, a handler's `dead_letter`, or "
        "`daemon.dead_letter` / `daemon.unmatched` that is not a `[handlers.NAME]` table;",
        "a route with an empty `handlers` list, or a handler listed twice;",
        "a handler that is its own `dead_letter`.",
    ):
        add(f"- {line}")
    add("")
    add("These are warnings (reported, but the config is valid):\n")
    for line in (
        "a handler that no route, no `dead_letter` and no `unmatched` names: it never "
        "receives messages;",
        "a connection that no route names while no route leaves `connection` out: its "
        "messages all go to `unmatched`;",
        "a `[codecs.NAME]` table that no connection uses;",
        "a connection `codec` that is close to, but not, a codec table or built-in name.",
    ):
        add(f"- {line}")
    add("")
    add(
        "A connection's `codec` that is neither a `[codecs.NAME]` table nor a built-in "
        "codec is not an error here: an installed codec plugin may provide it. Loading "
        "the plugins (`wsroute check`, `wsroute run`) reports it when none does.\n"
    )

    add("## Names\n")
    add(
        "The `NAME` of `[connections.NAME]`, `[codecs.NAME]`, `[routes.NAME]` and "
        "`[handlers.NAME]` is yours to choose; logs, metrics and errors use it. It may "
        "contain letters, digits, `_` and `-`. Names starting with `$` are reserved: "
        "`$connected` and `$disconnected` are the route keys of a connection's "
        "lifecycle messages.\n"
    )

    add("## Value syntax\n")
    add(
        '- **Duration**: a number with a unit, `ms`, `s`, `m` or `h`: `"250ms"`, `"30s"`, '
        '`"5m"`, `"1h"`; parts add up: `"1m30s"`. The number `0` is also accepted and '
        "means zero (where the key says what zero does).\n"
        "- **Size**: a number with a unit, `B`, `KiB`, `MiB` or `GiB` (powers of 1024) or "
        '`KB`, `MB`, `GB` (powers of 1000): `"512B"`, `"64KiB"`, `"1MiB"`. A plain '
        "integer is a number of bytes.\n"
        '- **Hex bytes**: two hex digits per byte, spaces between bytes allowed: `"02 00 00 00"`.\n'
        "- **Route key**: a string, integer, number or boolean, compared with the key the "
        "connection's codec extracts from each message.\n"
    )

    add("## Interpolation\n")
    add(
        "Every string value (never a key), at any depth, may refer to the environment, "
        "files and systemd credentials. It is expanded when the file is loaded, before "
        'types are checked, so `ping_interval = "${PING:-20s}"` works.\n'
    )
    add("| Write | Get |\n|---|---|")
    add(
        '| `${VAR}` | the environment variable `VAR`; unset is an error, set but empty gives `""` |'
    )
    add("| `${VAR:-default}` | `VAR`, or the literal `default` when `VAR` is unset or empty |")
    add(
        "| `${file:/path}` | the contents of a UTF-8 file, one trailing newline stripped; "
        "a relative path starts from the config file's folder |"
    )
    add(
        "| `${credential:NAME}` | the systemd credential `NAME`: the file "
        "`$CREDENTIALS_DIRECTORY/NAME` (`LoadCredential=` in the unit), one trailing "
        "newline stripped |"
    )
    add("| `$$` | a literal `$` |\n")
    add(
        'A `$` followed by anything but `{` or `$` is kept as it is, so `"$connected"` '
        "needs no escaping. A default is literal text: it cannot contain `}` or another "
        "reference. An error names the key and the reference (`environment variable "
        "EXCHANGE_TOKEN is not set`), never what a reference expanded to: expanded "
        "values may be secrets, and they never appear in logs or in `wsroute check` "
        "output.\n"
    )

    _section(out, "[daemon]", DaemonSection, "Process-wide settings. The table may be left out.")
    _section(
        out,
        "[connections.NAME]",
        ConnectionSection,
        "One upstream WebSocket, connected at start and kept connected: reconnects with "
        "backoff and jitter, keepalive pings, an idle timeout, the `on_connect` steps "
        "after every (re)connect and the periodic `every` frames. `url` is required.",
    )
    _section(
        out,
        "connections.NAME.tls",
        TlsSection,
        'An inline table (`tls = { ca_file = "..." }`) or a `[connections.NAME.tls]` table.',
        level=3,
    )
    _section(
        out,
        "connections.NAME.reconnect",
        ReconnectSection,
        'An inline table (`reconnect = { initial = "0.5s", max = "30s" }`) or a '
        "`[connections.NAME.reconnect]` table.",
        level=3,
    )
    _section(
        out,
        "[[connections.NAME.on_connect]]",
        StepSection,
        "The steps run in order after every connect and reconnect: typically a login, "
        "then subscriptions. Each step is exactly one of:\n\n"
        "- `json`: a text frame holding the JSON value;\n"
        "- `struct`: a binary frame of the packed values; with `json` in the same step, "
        "the packed header followed by the UTF-8 JSON body (one binary frame);\n"
        "- `text`: a text frame, sent as is;\n"
        "- `raw`: a binary frame, written as hex bytes;\n"
        "- `pause`: wait that long before the next step;\n"
        "- `expect`: wait for a message with that route key on this connection; none "
        "within `timeout` closes the connection and reconnects (logged). It may be the "
        "first step, for a server that speaks first.\n\n"
        "Two kinds in one step (`text` and `raw`, `json` and `pause`, ...) are an error; "
        "`struct` with `json` is one kind.",
        level=3,
    )
    _section(
        out,
        "connections.NAME.on_connect[i].struct",
        StructSection,
        'Packed with Python\'s `struct` module: `{ format = "<i", values = [2] }` is a '
        "little-endian int32 2. The values must fit the format.",
        level=4,
    )
    _section(
        out,
        "connections.NAME.on_connect[i].expect",
        ExpectSection,
        '`{ key = 2, timeout = "5s" }`: wait for the reply whose route key is 2.',
        level=4,
    )
    _section(
        out,
        "[[connections.NAME.every]]",
        EverySection,
        "A frame sent every `interval` while the connection is up (an application "
        "heartbeat). Exactly one frame kind, as for an `on_connect` step: `json`, "
        "`struct` (with or without `json`), `text` or `raw`.",
        level=3,
    )
    _section(
        out,
        "[codecs.NAME]",
        CodecSection,
        "A codec plugin with options, for connections to name in `codec`. A connection "
        "whose `codec` names no `[codecs.NAME]` table uses the codec plugin of that name "
        "with its default options; a table wins over a plugin of the same name. Built-in "
        "codec plugins: " + ", ".join(f"`{c}`" for c in BUILTIN_CODECS) + ".",
        extra="Every other key of the table is an option of the codec plugin, checked "
        "against the plugin's options when it is loaded; `wsroute plugins` lists them.",
    )
    _section(
        out,
        "[routes.NAME]",
        RouteSection,
        "Which messages go to which handlers. A message is matched on its connection and "
        "route key; every route that matches delivers it (fan-out), in file order. A "
        "message no route matches goes to `daemon.unmatched`. A route without `key` does "
        'not receive the lifecycle messages: name `"$connected"` or `"$disconnected"` '
        "in `key` to get them.",
    )
    _section(
        out,
        "[handlers.NAME]",
        HandlerSection,
        "A handler plugin with its options and delivery settings. `plugin` is the name "
        "of an installed plugin (built-in: `log`, `jsonl`, `reply`, `exec`, `webhook`, "
        "`websocket`, `redis`, `nats`) or "
        '`"package.module:attr"`. Each handler has its own bounded queue and worker '
        "task(s): a slow or failing handler never stops another one or a connection. "
        "A message whose every attempt fails (the first and `retries` more; an attempt "
        "over `timeout` fails) goes to the `dead_letter` handler. `plugin` and the other "
        "keys below, the *delivery keys*, are the daemon's: every handler takes them.",
        extra="Every other key of the table is an option of the plugin, passed to it "
        "untouched and checked against the plugin's options when it is loaded; "
        "`wsroute plugins` lists them.",
    )
    _section(
        out,
        "[sources.NAME]",
        SourceSection,
        "A producer of frames other than a WebSocket connection, such as a Redis stream "
        'consumer group (`type = "redis-stream"`). Sources share the connection name '
        "space: a route's `connection` names a source the same way, and a source cannot "
        "have the name of a connection. Its entries carry raw frames, decoded with `codec` "
        "like a connection's. A source acknowledges a message upstream only after every "
        "handler its routes name has handled it or dead-lettered it; what is unfinished "
        "at shutdown stays unacknowledged and is delivered again (at least once).",
        extra="Every other key of the table is an option of the source plugin, checked "
        "against the plugin's options when it is loaded; `wsroute plugins` lists them.",
    )
    return "\n".join(out).rstrip("\n") + "\n"


def _section(
    out: list[str], title: str, cls: type, intro: str, *, level: int = 2, extra: str = ""
) -> None:
    out.append(f"{'#' * level} `{title}`\n")
    out.append(intro + "\n")
    out.append("| Key | Type | Default | Description |\n|---|---|---|---|")
    for doc in field_docs(cls):
        if doc.name == "options":  # not a key: the rest of the table
            continue
        out.append(_row(cls, doc))
    out.append("")
    if extra:
        out.append(extra + "\n")


def _row(cls: type, doc: FieldDoc) -> str:
    kind = _TYPE_TEXT.get((cls, doc.name), doc.type)
    if doc.required:
        default = "required"
    elif doc.default == "(table)":
        default = "see below"
    else:
        default = f"`{doc.default}`" if doc.default not in (None, "(none)") else "(none)"
    cells = [f"`{doc.name}`", kind, default, doc.doc]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wsroute.config", description="The wsroute config schema."
    )
    parser.add_argument(
        "--reference", action="store_true", help="print the config reference (Markdown)"
    )
    args = parser.parse_args(argv)
    if not args.reference:
        parser.print_usage(sys.stderr)
        return 2
    sys.stdout.write(reference_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(_main())
