"""structlog, configured once: one event per line, one shape for every library.

Console (key=value, colours on a TTY), JSON (not a TTY), or native journal
entries (``journal``: under journald, ``JOURNAL_STREAM`` set and journald's
socket there, ``auto`` picks it): each event one datagram to journald's socket,
MESSAGE the readable line, PRIORITY from the level, each key its own field
(``CONNECTION=exchange``), see :func:`journal_fields`. Otherwise under journald
each line starts with its syslog priority (``<4>``), so ``journalctl -p
warning`` filters correctly.
Other libraries' stdlib log records (websockets, httpx, nats-py, redis-py)
go through the same processors, masking included; websockets' logger never
goes below INFO (at DEBUG it logs request headers verbatim) and httpx's never
below WARNING (a line per request, the whole URL in it).
Secrets: values of secret-looking keys are masked, tracebacks never
include local variables, and every secret value the config resolved (see
:func:`register_secrets`) is replaced by ``***`` wherever it appears in a
line: event values, nested strings, exception text, other libraries' records.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import stat
import struct
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "IDENTIFIER_ENV",
    "JOURNAL_SOCKET",
    "JOURNAL_SOCKET_ENV",
    "MIN_SECRET_LENGTH",
    "JournalWriter",
    "configure",
    "encode_journal_entry",
    "journal_available",
    "journal_field_name",
    "journal_fields",
    "mask_secrets",
    "redact",
    "redact_values",
    "register_secrets",
]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_SYSLOG_PRIORITY = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
}
_SECRET_WORDS = (
    "authorization",
    "password",
    "passwd",
    "secret",
    "token",
    "cookie",
    "api_key",
    "apikey",
    "credential",
)


#: Secret values shorter than this are not masked: "1" or "on" would mask noise everywhere.
MIN_SECRET_LENGTH = 4


class _Secrets:
    """The secret values known to this process, and one compiled alternation of them.

    Only ever added to: a reloaded config registers its own, and values of the
    old one stay masked (what is still running may log them).
    """

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.pattern: re.Pattern[str] | None = None
        self.lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in values:
            if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
                continue
            forms.add(value)
            escaped = json.dumps(value)[1:-1]  # how a JSON line spells it
            if escaped != value:
                forms.add(escaped)
        with self.lock:
            new = forms - self.values
            if not new:
                return
            self.values |= new
            # Longest first: a secret that contains another is masked whole.
            ordered = sorted(self.values, key=lambda v: (-len(v), v))
            self.pattern = re.compile("|".join(map(re.escape, ordered)))


_SECRETS = _Secrets()


def register_secrets(values: Iterable[str]) -> None:
    """Mask these values wherever they appear in a log line from now on.

    The config loader registers what it resolved (header values, user info of
    URLs, ``${file:...}`` and ``${credential:...}`` values, secret-looking query
    values, plugin options marked secret). Values shorter than
    :data:`MIN_SECRET_LENGTH` are ignored. Nothing is ever unregistered.
    """
    _SECRETS.add(values)


def mask_secrets(text: str) -> str:
    """``text`` with every registered secret value replaced by ``***``."""
    pattern = _SECRETS.pattern
    return text if pattern is None else pattern.sub("***", text)


def _mask_deep(value: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return pattern.sub("***", value)
    if isinstance(value, Mapping):
        return {_mask_deep(k, pattern): _mask_deep(v, pattern) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        masked = [_mask_deep(v, pattern) for v in value]
        return masked if isinstance(value, list) else tuple(masked)
    return value


def redact_values(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Replace every registered secret value (:func:`register_secrets`) by ``***``
    in the event's strings, at any depth. Costs nothing while none is registered."""
    pattern = _SECRETS.pattern
    if pattern is None:
        return event_dict
    for key, value in event_dict.items():
        if key != "exc_info":  # rendered later; the rendered line is masked as a whole
            event_dict[key] = _mask_deep(value, pattern)
    return event_dict


class _MaskRendered:
    """Wrap a renderer: mask registered secrets in the finished line too (a
    traceback or an object's ``repr`` is only text once rendered)."""

    def __init__(self, renderer: Processor) -> None:
        self.renderer = renderer

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> Any:
        rendered = self.renderer(logger, method, event_dict)
        pattern = _SECRETS.pattern
        if pattern is None:
            return rendered
        if isinstance(rendered, bytes):
            rendered = rendered.decode("utf-8", "replace")
        return pattern.sub("***", rendered) if isinstance(rendered, str) else rendered


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _mask(value: Any) -> Any:
    if isinstance(value, MutableMapping):
        return {k: ("***" if _is_secret(str(k)) else _mask(v)) for k, v in value.items()}
    return value


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Mask the values of secret-looking keys (``token``, ``authorization``...)."""
    for key in list(event_dict):
        if _is_secret(key):
            event_dict[key] = "***"
        elif key in ("headers", "request_headers"):
            event_dict[key] = _mask(event_dict[key])
    return event_dict


class _PriorityPrefix:
    """Wrap a renderer: prefix each line with ``<N>`` for journald's level."""

    def __init__(self, renderer: Processor) -> None:
        self.renderer = renderer

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> Any:
        level = str(event_dict.get("level", method))
        rendered = self.renderer(logger, method, event_dict)
        if isinstance(rendered, bytes):
            rendered = rendered.decode("utf-8", "replace")
        return f"<{_SYSLOG_PRIORITY.get(level, 6)}>{rendered}"


# --- journald's native protocol -------------------------------------------------

#: Where journald listens for native entries (``sd_journal_send``'s socket).
JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: Overrides :data:`JOURNAL_SOCKET`; meant for tests (a socket in a temp dir).
JOURNAL_SOCKET_ENV = "WSROUTE_JOURNAL_SOCKET"
#: Overrides the entries' ``SYSLOG_IDENTIFIER`` (``wsroute``): a unit's own
#: ``SyslogIdentifier=`` applies to its stdout/stderr only, not to native entries.
IDENTIFIER_ENV = "WSROUTE_SYSLOG_IDENTIFIER"
#: The journal's own cap on a field name.
_FIELD_NAME_MAX = 64
_FIELD_INVALID = re.compile(r"[^A-Z0-9_]")
#: Field names wsroute writes itself, or journald gives meaning to: an event key
#: that would land on one of them gets the ``F_`` prefix instead.
_RESERVED_FIELDS = frozenset(
    {
        "MESSAGE",
        "MESSAGE_ID",
        "PRIORITY",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "ERRNO",
        "EVENT",
        "TRACEBACK",
        "TID",
        "UNIT",
        "USER_UNIT",
        "INVOCATION_ID",
        "USER_INVOCATION_ID",
        "DOCUMENTATION",
        "SYSLOG_FACILITY",
        "SYSLOG_IDENTIFIER",
        "SYSLOG_PID",
        "SYSLOG_TIMESTAMP",
        "SYSLOG_RAW",
    }
)
#: Event keys that are not fields of their own (their content is in MESSAGE,
#: PRIORITY, TRACEBACK, CODE_*; journald keeps its own timestamp).
_NOT_FIELDS = frozenset(
    {"event", "level", "timestamp", "exception", "stack", "pathname", "lineno", "func_name"}
)
_BARE_VALUE = re.compile(r"[^\s\"'=\\]+")


def journal_field_name(key: str) -> str:
    """An event key as a journal field name: upper case, only ``A-Z0-9_``, at most
    64 characters, not starting with ``_`` (journald's trusted fields) or a digit:
    ``F_`` is put in front then, and in front of a name wsroute or journald uses
    (``message`` → ``F_MESSAGE``)."""
    name = _FIELD_INVALID.sub("_", key.upper())
    if not name or name[0] == "_" or name[0].isdigit() or name in _RESERVED_FIELDS:
        name = "F_" + name
    return name[:_FIELD_NAME_MAX]


def _field_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _message_value(value: Any) -> str:
    if isinstance(value, str):
        return value if _BARE_VALUE.fullmatch(value) else json.dumps(value, ensure_ascii=False)
    return _field_text(value)


def encode_journal_entry(fields: Iterable[tuple[str, str | bytes]]) -> bytes:
    """One entry in journald's native protocol: ``KEY=VALUE\\n`` per field; a value
    with a newline in the binary form ``KEY\\n`` + 64-bit little-endian length +
    value + ``\\n``. Names must already be valid (:func:`journal_field_name`)."""
    parts: list[bytes] = []
    for name, value in fields:
        data = value.encode("utf-8", "replace") if isinstance(value, str) else value
        key = name.encode("ascii")
        if b"\n" in data:
            parts += (key, b"\n", struct.pack("<Q", len(data)), data, b"\n")
        else:
            parts += (key, b"=", data, b"\n")
    return b"".join(parts)


def journal_fields(
    event_dict: Mapping[str, Any], method: str, identifier: str = "wsroute"
) -> list[tuple[str, str]]:
    """The fields of one event: MESSAGE (the event, then ``key=value`` pairs, then
    the traceback if any), PRIORITY, SYSLOG_IDENTIFIER, CODE_*, EVENT, TRACEBACK,
    and each other key as its own field. ``None`` values are left out. Every
    value is masked (:func:`mask_secrets`)."""
    event = str(event_dict.get("event", ""))
    level = str(event_dict.get("level", method))
    pairs: list[str] = [event]
    extra: list[tuple[str, str]] = []
    for key, value in event_dict.items():
        if key in _NOT_FIELDS or value is None:
            continue
        key = str(key)
        pairs.append(f"{key}={_message_value(value)}")
        extra.append((journal_field_name(key), _field_text(value)))
    message = " ".join(pairs)
    traceback = "\n".join(str(event_dict[k]) for k in ("stack", "exception") if event_dict.get(k))
    if traceback:
        message += "\n" + traceback
    fields: list[tuple[str, str]] = [
        ("MESSAGE", message),
        ("PRIORITY", str(_SYSLOG_PRIORITY.get(level, 6))),
        ("SYSLOG_IDENTIFIER", identifier),
        ("EVENT", event),
    ]
    if traceback:
        fields.append(("TRACEBACK", traceback))
    if event_dict.get("pathname"):
        fields.append(("CODE_FILE", str(event_dict["pathname"])))
        if event_dict.get("lineno") is not None:
            fields.append(("CODE_LINE", str(event_dict["lineno"])))
        if event_dict.get("func_name"):
            fields.append(("CODE_FUNC", str(event_dict["func_name"])))
    fields += extra
    pattern = _SECRETS.pattern
    if pattern is None:
        return fields
    return [(name, pattern.sub("***", value)) for name, value in fields]


_JOURNAL_SOCKET_OBJECT: socket.socket | None = None
_JOURNAL_LOCK = threading.Lock()


class JournalWriter:
    """Sends entries to journald's datagram socket; :meth:`msg` never raises.

    An entry too big for one datagram goes the way ``sd_journal_send`` sends it:
    written to a sealed memfd whose descriptor is passed with ``SCM_RIGHTS``
    (nothing is cut). When the socket cannot take it (journald restarting, no
    socket, the memfd refused), the event is written as a JSON line, with its
    ``<N>`` priority prefix, to ``fallback`` (stderr) instead.
    """

    def __init__(
        self,
        path: str = JOURNAL_SOCKET,
        fallback: TextIO | None = None,
        identifier: str = "wsroute",
    ) -> None:
        self.path = path
        self.fallback = fallback or sys.stderr
        self.identifier = identifier

    @staticmethod
    def _sock() -> socket.socket:
        """One unconnected socket per process, shared by every writer: a reload
        reconfigures, but loggers bound before it keep their writer."""
        global _JOURNAL_SOCKET_OBJECT
        if _JOURNAL_SOCKET_OBJECT is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            with contextlib.suppress(OSError):  # as sd_journal_send: room for big entries
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            _JOURNAL_SOCKET_OBJECT = sock
        return _JOURNAL_SOCKET_OBJECT

    def send(self, payload: bytes) -> None:
        """Send one encoded entry; raises :class:`OSError` when journald does not take it."""
        with _JOURNAL_LOCK:
            sock = self._sock()
            try:
                sock.sendto(payload, self.path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_memfd(sock, payload)

    def _send_memfd(self, sock: socket.socket, payload: bytes) -> None:
        fd = os.memfd_create("wsroute-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            # journald only takes a sealed memfd.
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = array.array("i", [fd]).tobytes()
            sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], 0, self.path)
        finally:
            os.close(fd)

    def msg(self, fields: list[tuple[str, str]], event_dict: EventDict) -> None:
        try:
            self.send(encode_journal_entry(fields))
        except (OSError, ValueError):
            self._write_fallback(event_dict)

    def _write_fallback(self, event_dict: EventDict) -> None:
        record = {
            k: v for k, v in event_dict.items() if k not in ("pathname", "lineno", "func_name")
        }
        level = str(record.get("level", "info"))
        line = json.dumps(record, default=repr, ensure_ascii=False)
        with contextlib.suppress(OSError, ValueError):
            self.fallback.write(f"<{_SYSLOG_PRIORITY.get(level, 6)}>{mask_secrets(line)}\n")
            self.fallback.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _JournalRenderer:
    """Final processor: the event's journal fields, for :meth:`JournalWriter.msg`."""

    def __init__(self, identifier: str) -> None:
        self.identifier = identifier

    def __call__(
        self, _: WrappedLogger, method: str, event_dict: EventDict
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (journal_fields(event_dict, method, self.identifier), event_dict), {}


class _JournalHandler(logging.Handler):
    """Other libraries' stdlib records, through the same processors, to the journal."""

    def __init__(self, writer: JournalWriter, chain: list[Processor]) -> None:
        super().__init__()
        self.writer = writer
        self.chain = chain
        self.renderer = _JournalRenderer(writer.identifier)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            method = record.levelname.lower()
            event_dict: Any = {"event": record.getMessage(), "_record": record}
            if record.exc_info:
                event_dict["exc_info"] = record.exc_info
            if record.stack_info:
                event_dict["stack_info"] = record.stack_info
            for processor in self.chain:
                event_dict = processor(None, method, event_dict)
            event_dict.pop("_record", None)
            event_dict.pop("_from_structlog", None)
            event_dict.update(
                pathname=record.pathname, lineno=record.lineno, func_name=record.funcName
            )
            args, _ = self.renderer(None, method, event_dict)
            self.writer.msg(*args)
        except structlog.DropEvent:
            pass
        except Exception:  # logging must not raise
            self.handleError(record)


def journal_available(environ: Mapping[str, str], path: str = JOURNAL_SOCKET) -> bool:
    """Under journald (``JOURNAL_STREAM`` set) and its native socket exists."""
    if not environ.get("JOURNAL_STREAM"):
        return False
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def configure(
    level: str = "info",
    fmt: Literal["auto", "json", "console", "journal"] = "auto",
    *,
    stream: TextIO | None = None,
    environ: MutableMapping[str, str] | None = None,
    journal_socket: str | None = None,
) -> None:
    """Configure structlog and the stdlib root logger. Call once, early; again on reload.

    ``journal_socket`` (default: ``$WSROUTE_JOURNAL_SOCKET``, else journald's own)
    is where ``journal`` entries go; ``auto`` picks ``journal`` only under
    journald when that socket exists.
    """
    stream = stream or sys.stderr
    environ = os.environ if environ is None else environ
    journald = bool(environ.get("JOURNAL_STREAM"))
    socket_path = journal_socket or environ.get(JOURNAL_SOCKET_ENV) or JOURNAL_SOCKET
    if fmt == "journal" or (fmt == "auto" and journal_available(environ, socket_path)):
        identifier = environ.get(IDENTIFIER_ENV) or "wsroute"
        _configure_journal(level, JournalWriter(socket_path, stream, identifier))
        return
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    numeric = _LEVELS.get(level, logging.INFO)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Processor
    if use_json:
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=stream.isatty() and not journald and "NO_COLOR" not in environ,
            exception_formatter=structlog.dev.plain_traceback,
        )
    shared.append(redact_values)  # after the exception is rendered into the event (JSON)
    renderer = _MaskRendered(renderer)
    if journald:
        renderer = _PriorityPrefix(renderer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    _quiet_libraries(numeric)


def _configure_journal(level: str, writer: JournalWriter) -> None:
    """Native journal entries (see :class:`JournalWriter`); stderr only as the fallback."""
    numeric = _LEVELS.get(level, logging.INFO)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),  # for the stderr fallback
        redact,
        structlog.processors.format_exc_info,  # plain text, no locals
        redact_values,
    ]
    callsite = structlog.processors.CallsiteParameterAdder(
        {
            structlog.processors.CallsiteParameter.PATHNAME,
            structlog.processors.CallsiteParameter.LINENO,
            structlog.processors.CallsiteParameter.FUNC_NAME,
        }
    )
    structlog.configure(
        processors=[*shared, callsite, _JournalRenderer(writer.identifier)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers[:] = [_JournalHandler(writer, [structlog.stdlib.add_logger_name, *shared])]
    root.setLevel(numeric)
    _quiet_libraries(numeric)


#: Libraries' loggers held at a level of their own (at least): what they say below it
#: is either verbatim secrets or one line per request, and wsroute logs what matters
#: itself (a sink's failures, retries, outages), with its URL redacted.
_LIBRARY_LEVELS = {
    # At DEBUG websockets logs handshake headers (Authorization included) verbatim.
    "websockets": logging.INFO,
    # One INFO line per request, with the whole URL (user:password@ and query included).
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
}


def _quiet_libraries(level: int) -> None:
    for name, floor in _LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(max(level, floor))
