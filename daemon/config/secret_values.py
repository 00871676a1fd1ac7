"""Secret values of a config: what the logs must mask, found before anything logs.

Invariant: :func:`resolved_secrets` over-collects rather than misses. Every
value a ``${file:...}`` or ``${credential:...}`` read, every connection header
value, URL credentials and secret-looking query values are returned, to be
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
