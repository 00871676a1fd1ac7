"""Helpers for anything that talks to a server: public, for connections and plugins.

:func:`redact_url` is how a URL appears in logs (no user info, query values
masked), :func:`check_url` refuses at load a URL no client could use (so that
``wsroute check`` finds what ``run`` would otherwise find later),
:func:`retry_after` reads a ``Retry-After`` header the way the connections
honour it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .plugin import OptionError

__all__ = ["check_url", "redact_url", "retry_after"]

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
    """The URL for logs: user info shown as ``***@``, no fragment, and every query
    value masked (``***``) except those of the parameters named in ``keep``:
    ``http://***@127.0.0.1:8080/in?token=***``."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number: shown as it is, the URL is refused anyway
        port = None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if port:
        netloc = f"{netloc}:{port}"
    if "@" in parts.netloc:
        netloc = f"***@{netloc}"
    query = parts.query
    if query:
        shown = set(keep)
        pairs = [
            (k, v if k in shown else "***") for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def check_url(
    url: str, schemes: Iterable[str], *, key: str = "url", needs_host: bool = True
) -> None:
    """Refuse a URL a client could not use: :class:`~wsroute.OptionError` at ``key``.

    Call it from an ``Options.__post_init__``, so that ``wsroute check`` refuses
    what the client library would refuse (or crash on) when the daemon runs.
    ``schemes`` are the accepted schemes without ``://`` (``("ws", "wss")``).
    Checked: the scheme; a host, unless ``needs_host`` is false (``unix://``
    paths); a port from 1 to 65535 when one is given; user info that decodes
    (percent-encoded UTF-8); no space or control character anywhere. The
    message shows the URL as the logs do (:func:`redact_url`), never its
    credentials.
    """
    accepted = tuple(schemes)
    try:
        parts = urlsplit(url)
        shown = f'"{redact_url(url)}"'
    except ValueError:  # an unclosed [ of an IPv6 address
        raise OptionError(key, "is not a URL (an IPv6 address needs its closing ])") from None
    if parts.scheme.lower() not in accepted or not url.lower().startswith(
        f"{parts.scheme.lower()}://"
    ):
        listed = " or ".join(f"{scheme}://" for scheme in accepted)
        raise OptionError(key, f"must start with {listed}, got {shown}")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise OptionError(key, f"must not contain spaces or control characters, got {shown}")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            raise OptionError(key, f"has something after its IPv6 address: {shown}")
    else:
        host, colon, port_text = hostport.rpartition(":")
        host, port = (host, port_text) if colon else (hostport, None)
    if needs_host and not host:
        raise OptionError(key, f"has no host, got {shown}")
    # "host:" (an empty port) means the scheme's port, as for every client.
    if port and (not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535):
        raise OptionError(key, f"port must be a number from 1 to 65535, got {port!r}")
    if at:
        for part in userinfo.split(":", 1):
            try:
                unquote(part, errors="strict")
            except UnicodeDecodeError:
                raise OptionError(key, "has user info that is not percent-encoded UTF-8") from None
