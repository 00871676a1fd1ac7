"""Secret values of a config: what the logs must mask, found before anything logs.

Invariant: :func:`resolved_secrets` over-collects rather than misses. Every
value a ``${file:...}`` or ``${credential:...}`` read, every header value of a
connection, a sink or a source, the credentials and secret-looking query
values of every URL in them are returned, to be
registered with :func:`wsroute.logging.register_secrets` before the config is
validated (so not even an error message can show them).
"""

from __future__ import annotations

from typing import Any

from ..interpolate import Interpolation

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

    What ``${file:...}`` and ``${credential:...}`` read anywhere; and in every
    connection, handler (sink) and source table, at any depth: every header
    value (whole, what ``${VAR}`` put in it, and in ``Authorization`` the
    credential after its scheme, e.g. ``Bearer``), and of every URL (``url``,
    ``proxy``, a list of servers...) the user and password (as written,
    decoded, and as the Basic ``Authorization`` value) and the values of
    secret-looking query parameters not in the table's ``log_query_keys``.
    Plugin options marked secret are registered when they are built, too.
    """
    values: list[str] = []
    for expansion in expanded.expansions:
        values.extend(expansion.secrets)
        if ".headers." in expansion.path and expansion.path.startswith(_SECTIONS):
            values.extend(expansion.substituted)
    for section in _SECTIONS:
        tables = expanded.document.get(section.rstrip("."))
        for table in tables.values() if isinstance(tables, dict) else ():
            if isinstance(table, dict):
                keep = table.get("log_query_keys")
                _collect(table, keep if isinstance(keep, list) else [], values)
    return values


#: The tables whose URLs and headers are secrets: connections, sinks, sources.
_SECTIONS = ("connections.", "handlers.", "sources.")


def _collect(value: Any, keep: list[Any], out: list[str]) -> None:
    """The header values and URL credentials in one table, at any depth."""
    if isinstance(value, dict):
        for name, item in value.items():
            if str(name).lower() == "headers" and isinstance(item, dict):
                _header_secrets(item, out)
            else:
                _collect(item, keep, out)
    elif isinstance(value, list):
        for item in value:
            _collect(item, keep, out)
    elif isinstance(value, str) and "://" in value:
        out.extend(_url_secrets(value, keep))


def _header_secrets(headers: dict[Any, Any], out: list[str]) -> None:
    for name, value in headers.items():
        if isinstance(value, str):
            out.append(value)
            scheme, _, credential = value.partition(" ")
            if str(name).lower() in _AUTH_HEADERS and scheme.isalpha():
                out.append(credential.strip())


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
