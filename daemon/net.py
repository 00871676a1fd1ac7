"""Helpers for anything that talks to a server: public, for connections and plugins.

:func:`redact_url` is how a URL appears in logs (no user info, query values
masked), :func:`retry_after` reads a ``Retry-After`` header the way the
connections honour it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["redact_url", "retry_after"]

_RETRY_AFTER_CAP = 3600.0


def retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP date), capped at 1 h."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, min(seconds, _RETRY_AFTER_CAP))


def redact_url(url: str, keep: Iterable[str] = ()) -> str:
    """The URL for logs: no user info, no fragment, and every query value masked
    (``***``) except those of the parameters named in ``keep``."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number: shown as it is, the URL is refused anyway
        port = None
    netloc = parts.hostname or ""
    if port:
        netloc = f"{netloc}:{port}"
    query = parts.query
    if query:
        shown = set(keep)
        pairs = [
            (k, v if k in shown else "***") for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
