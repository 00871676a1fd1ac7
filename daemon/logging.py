"""structlog, configured once: one event per line, one shape for every library.

Console (key=value, colours on a TTY) or JSON (not a TTY, e.g. journald).
Under journald (``JOURNAL_STREAM`` set) each line starts with its syslog
priority (``<4>``), so ``journalctl -p warning`` filters correctly.
``websockets``' own stdlib log records go through the same processors; its
logger never goes below INFO, because at DEBUG it logs request headers verbatim.
Secrets: values of secret-looking keys are masked, tracebacks never
include local variables, and every secret value the config resolved (see
:func:`register_secrets`) is replaced by ``***`` wherever it appears in a
line: event values, nested strings, exception text, other libraries' records.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "MIN_SECRET_LENGTH",
    "configure",
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
    # At DEBUG websockets logs handshake headers (Authorization included) verbatim.
    logging.getLogger("websockets").setLevel(max(numeric, logging.INFO))
