"""structlog, configured once: one event per line, one shape for every library.

Console (key=value, colours on a TTY) or JSON (not a TTY, e.g. journald).
Under journald (``JOURNAL_STREAM`` set) each line starts with its syslog
priority (``<4>``), so ``journalctl -p warning`` filters correctly.
``websockets``' own stdlib log records go through the same processors; its
logger never goes below INFO, because at DEBUG it logs request headers verbatim.
Secrets: values of secret-looking keys are masked and tracebacks never
include local variables.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["configure", "redact"]

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


def configure(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    *,
    stream: TextIO | None = None,
    environ: MutableMapping[str, str] | None = None,
) -> None:
    """Configure structlog and the stdlib root logger. Call once, early; again on reload."""
    stream = stream or sys.stderr
    environ = os.environ if environ is None else environ
    journald = bool(environ.get("JOURNAL_STREAM"))
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
    # At DEBUG websockets logs handshake headers (Authorization included) verbatim.
    logging.getLogger("websockets").setLevel(max(numeric, logging.INFO))
