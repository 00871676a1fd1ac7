"""Native journald entries: one datagram per event, each key a field of its own.

Under journald (``JOURNAL_STREAM`` set, its socket there) ``log_format =
"journal"`` (or ``auto``) sends each event as one entry in journald's native
protocol: MESSAGE the readable line, PRIORITY from the level, EVENT, CODE_*,
TRACEBACK, and each key as its own field (``CONNECTION=exchange``; see
:func:`journal_fields`). Every value is masked (:mod:`wsroute.masking`). An
entry too big for a datagram goes in a sealed memfd, as ``sd_journal_send``
does; when journald does not take an entry, it is written to stderr as a JSON
line with its ``<N>`` priority (:class:`JournalWriter`).
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
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from .masking import mask_secrets

__all__ = [
    "IDENTIFIER_ENV",
    "JOURNAL_SOCKET",
    "JOURNAL_SOCKET_ENV",
    "SYSLOG_PRIORITY",
    "JournalHandler",
    "JournalRenderer",
    "JournalWriter",
    "encode_journal_entry",
    "journal_available",
    "journal_field_name",
    "journal_fields",
]

#: syslog priorities by structlog level: journald's PRIORITY, and the ``<N>`` prefix.
SYSLOG_PRIORITY = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
}
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
        ("PRIORITY", str(SYSLOG_PRIORITY.get(level, 6))),
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
    return [(name, mask_secrets(value)) for name, value in fields]


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
            self.fallback.write(f"<{SYSLOG_PRIORITY.get(level, 6)}>{mask_secrets(line)}\n")
            self.fallback.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class JournalRenderer:
    """Final processor: the event's journal fields, for :meth:`JournalWriter.msg`."""

    def __init__(self, identifier: str) -> None:
        self.identifier = identifier

    def __call__(
        self, _: WrappedLogger, method: str, event_dict: EventDict
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (journal_fields(event_dict, method, self.identifier), event_dict), {}


class JournalHandler(logging.Handler):
    """Other libraries' stdlib records, through the same processors, to the journal."""

    def __init__(self, writer: JournalWriter, chain: list[Processor]) -> None:
        super().__init__()
        self.writer = writer
        self.chain = chain
        self.renderer = JournalRenderer(writer.identifier)

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
