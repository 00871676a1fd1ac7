"""Secret masking for every log line: secret-looking keys, and every secret value known.

Two rules. Values of secret-looking keys (``token``, ``authorization``,
``password``...; :func:`redact`) are replaced by ``***``. And every secret value
the config resolved — registered with :func:`register_secrets` by the loader —
is replaced by ``***`` wherever it appears: event values at any depth
(:func:`redact_values`), the rendered line (:class:`MaskRendered`: a traceback or
a ``repr`` is only text once rendered), any text (:func:`mask_secrets`: API
answers, dead letters, ``check``'s messages). Registered values are never
unregistered: what still runs after a reload may log the old ones.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "MIN_SECRET_LENGTH",
    "MaskRendered",
    "mask_secrets",
    "redact",
    "redact_values",
    "register_secrets",
]

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
            forms.update(f for f in spellings(value) if len(f) >= MIN_SECRET_LENGTH)
        with self.lock:
            new = forms - self.values
            if not new:
                return
            self.values |= new
            # Longest first: a secret that contains another is masked whole.
            ordered = sorted(self.values, key=lambda v: (-len(v), v))
            self.pattern = re.compile("|".join(map(_pattern_of, ordered)))


def spellings(value: str) -> set[str]:
    """The ways a secret value may be written where it turns up again: as it is, as a
    JSON string spells it, and percent-encoded or decoded as a URL holds it (an
    upstream that echoes its query string in a close reason, a library that logs
    the URL as sent) — ``+`` or ``%20`` for a space; ``%2F`` and ``%2f`` alike are
    matched by :func:`_pattern_of`."""
    forms = {value}
    for form in (
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value, safe=""),
        urllib.parse.quote(value, safe="/:@!$&'()*+,;="),  # what a URL leaves as it is
        urllib.parse.unquote(value),
        urllib.parse.unquote_plus(value),
    ):
        forms.add(form)
    forms |= {json.dumps(form)[1:-1] for form in forms}  # how a JSON line spells each
    return forms


def _pattern_of(form: str) -> str:
    """``form`` as a regular expression whose percent escapes match either case."""

    def either_case(match: re.Match[str]) -> str:
        return "%" + "".join(
            f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in match.group(1)
        )

    return _PERCENT.sub(either_case, re.escape(form))


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
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


class MaskRendered:
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


#: Values a secret-looking key may hold that only say what happened to a secret
#: (``redirect_followed``'s ``credentials``: ``sent`` or ``dropped``): shown as they are.
_ABOUT_A_SECRET = frozenset({"sent", "dropped"})


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Mask the values of secret-looking keys (``token``, ``authorization``...), except
    a boolean or a word that only says what became of one (:data:`_ABOUT_A_SECRET`)."""
    for key in list(event_dict):
        if _is_secret(key):
            value = event_dict[key]
            if isinstance(value, bool) or (isinstance(value, str) and value in _ABOUT_A_SECRET):
                continue
            event_dict[key] = "***"
        elif key in ("headers", "request_headers"):
            event_dict[key] = _mask(event_dict[key])
    return event_dict
