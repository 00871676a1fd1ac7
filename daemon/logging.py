"""structlog, configured once: one event per line, one shape for every library.

:func:`configure` picks the output: console (key=value, colours on a TTY),
JSON (not a TTY), or native journal entries (``journal``; ``auto`` picks it
under journald when journald's socket is there: :mod:`wsroute.journal`).
Otherwise under journald each line starts with its syslog priority (``<4>``),
so ``journalctl -p warning`` filters correctly. Other libraries' stdlib log
records (websockets, httpx, nats-py, redis-py) go through the same
processors; websockets' logger never goes below INFO (at DEBUG it logs request
headers verbatim) and httpx's never below WARNING (a line per request, the
whole URL in it). Every line passes the secret masking of
:mod:`wsroute.masking` (secret-looking keys, every registered secret value,
wherever it appears), and tracebacks never include local variables. The
masking and journal names are re-exported here.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from .journal import (
    IDENTIFIER_ENV,
    JOURNAL_SOCKET,
    JOURNAL_SOCKET_ENV,
    SYSLOG_PRIORITY,
    JournalHandler,
    JournalRenderer,
    JournalWriter,
    encode_journal_entry,
    journal_available,
    journal_field_name,
    journal_fields,
)
from .masking import (
    MIN_SECRET_LENGTH,
    MaskRendered,
    mask_secrets,
    redact,
    redact_values,
    register_secrets,
)

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


class _PriorityPrefix:
    """Wrap a renderer: prefix each line with ``<N>`` for journald's level."""

    def __init__(self, renderer: Processor) -> None:
        self.renderer = renderer

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> Any:
        level = str(event_dict.get("level", method))
        rendered = self.renderer(logger, method, event_dict)
        if isinstance(rendered, bytes):
            rendered = rendered.decode("utf-8", "replace")
        return f"<{SYSLOG_PRIORITY.get(level, 6)}>{rendered}"


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
    renderer = MaskRendered(renderer)
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
        processors=[*shared, callsite, JournalRenderer(writer.identifier)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers[:] = [JournalHandler(writer, [structlog.stdlib.add_logger_name, *shared])]
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
