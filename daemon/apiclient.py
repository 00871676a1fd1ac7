"""Finding a running daemon's API and talking to it: the client side of ``[daemon.api]``.

``wsroute status``, ``tap`` and ``top`` reach the daemon through the address
:func:`resolve` finds: ``--api ADDR`` as given, or the config's ``[daemon.api]
listen``, preferring a Unix socket (where ``/status`` and ``/tap`` are served
by default). Every failure is an :class:`ApiError` carrying one line for the
operator and the exit status (sysexits) the command ends with.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from .config import load, parse_listen
from .config.load import parse_toml
from .exceptions import ConfigError, WsrouteError
from .inputs import MAX_CONFIG_BYTES, InputRefused, decode_text, read_file

__all__ = [
    "DEFAULT_TIMEOUT",
    "EX_CONFIG",
    "EX_NOPERM",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "ApiAddress",
    "ApiError",
    "get_body",
    "get_json",
    "open_tap",
    "resolve",
    "tap_query",
]

EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_NOPERM = 77
EX_CONFIG = 78
DEFAULT_TIMEOUT = 5.0

_ANY_HOST = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class ApiError(WsrouteError):
    """What went wrong reaching the API, in one line, and the exit status it means."""

    def __init__(self, message: str, exit_code: int = EX_UNAVAILABLE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ApiAddress:
    """Where the API listens: a Unix socket path, or a TCP host and port."""

    path: str | None = None
    host: str = "127.0.0.1"
    port: int = 0

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    @classmethod
    def parse(cls, text: str) -> ApiAddress:
        """``unix:/path`` or ``host:port`` (``[::1]:port`` for IPv6), as ``listen`` takes."""
        try:
            host, port = parse_listen(text)
        except ValueError as exc:
            raise ApiError(str(exc).removeprefix("listen: "), EX_CONFIG) from None
        if host == "unix":
            return cls(path=str(port))
        assert isinstance(port, int)
        # A daemon listening on every address is reached on the loopback one.
        return cls(host=_ANY_HOST.get(host, host), port=port)

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def ws_uri(self, path: str) -> str:
        """The ``ws://`` URI of ``path`` (for a Unix socket the host is only a label)."""
        if self.path is not None:
            return f"ws://localhost{path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}{path}"


def resolve(*, api: str | None, config: str | None, default_config: str) -> ApiAddress:
    """The address to reach: ``--api`` when given, else the config's ``[daemon.api] listen``.

    A Unix socket is preferred, since ``/status`` and ``/tap`` are served on
    TCP only with ``tap_over_tcp``. Raises :class:`ApiError` (exit 78) when the
    config cannot be read or has no API.
    """
    if api is not None:
        return ApiAddress.parse(api)
    path = config or default_config
    listen = _listen_of(path, given=config is not None)
    if not listen:
        raise ApiError(
            f"{path}: the API is not configured: add [daemon.api] listen = [...]", EX_CONFIG
        )
    addresses = [ApiAddress.parse(entry) for entry in listen]
    return next((a for a in addresses if a.is_unix), addresses[0])


def _listen_of(path: str, *, given: bool) -> list[str]:
    if not os.path.exists(path):
        hint = "" if given else " (give -c FILE or --api ADDR)"
        raise ApiError(f"config file not found: {path}{hint}", EX_CONFIG)
    try:
        return list(load(path).daemon.api.listen)
    except ConfigError as error:
        # The operator's shell may lack what the daemon's ${VAR}s read: the
        # address alone is enough here, when it can be read as it stands.
        listen = _raw_listen(path)
        if listen is not None:
            return listen
        first = error.issues[0] if error.issues else error
        raise ApiError(f"{path}: {first}", EX_CONFIG) from None


def _raw_listen(path: str) -> list[str] | None:
    try:
        document, issue = parse_toml(decode_text(read_file(path, MAX_CONFIG_BYTES)))
        listen = document["daemon"]["api"]["listen"]
    except (InputRefused, KeyError, TypeError):
        return None
    if issue is not None:
        return None
    if not isinstance(listen, list) or not all(isinstance(x, str) for x in listen):
        return None
    for entry in listen:
        try:
            parse_listen(entry)
        except ValueError:
            return None
    return listen


class _UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def unreachable(address: ApiAddress, exc: BaseException) -> ApiError:
    """The one line for an address that could not be reached, by what the OS said."""
    if isinstance(exc, PermissionError):
        return ApiError(
            f"permission denied on {address}: run as the daemon's user or a member of its group",
            EX_NOPERM,
        )
    if isinstance(exc, (ConnectionRefusedError, FileNotFoundError)):
        return ApiError(f"wsroute is not running (nothing listens on {address})")
    if isinstance(exc, TimeoutError):
        return ApiError(f"wsroute did not answer on {address}")
    if isinstance(exc, (ConnectionError, http.client.HTTPException)):
        return ApiError(f"wsroute went away ({address}: {exc or type(exc).__name__})")
    return ApiError(f"cannot reach wsroute on {address}: {exc}")


def refused_over_tcp(address: ApiAddress, what: str) -> ApiError:
    return ApiError(
        f"{what} is not served over TCP ({address}): use the Unix socket "
        "(--api unix:PATH, or -c FILE with a unix: listen entry) or set "
        "[daemon.api] tap_over_tcp = true",
        EX_NOPERM,
    )


def get_body(address: ApiAddress, path: str, *, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """``GET path`` and its body; :class:`ApiError` for anything but a 200."""
    conn: http.client.HTTPConnection
    if address.path is not None:
        conn = _UnixHTTPConnection(address.path, timeout)
    else:
        conn = http.client.HTTPConnection(address.host, address.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise unreachable(address, exc) from None
    finally:
        conn.close()
    if response.status == 403 and not address.is_unix:
        raise refused_over_tcp(address, path)
    if response.status != 200:
        why = _first_line(body) or response.reason
        raise ApiError(f"{path} on {address}: HTTP {response.status}: {why}")
    return body


def _first_line(body: bytes | bytearray | None) -> str:
    """What a refusal's text body says, in one line."""
    lines = (body or b"").decode("utf-8", "replace").strip().splitlines()
    return lines[0][:200] if lines else ""


def get_json(address: ApiAddress, path: str, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """``GET path`` and its JSON body; :class:`ApiError` for anything but a 200 with JSON."""
    body = get_body(address, path, timeout=timeout)
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(f"{path} on {address}: the answer is not JSON") from None


def tap_query(filters: Mapping[str, Sequence[str]]) -> str:
    """``/tap`` with its filters as (repeated) query parameters."""
    pairs = [(name, value) for name, values in filters.items() for value in values]
    return "/tap" + (f"?{urlencode(pairs)}" if pairs else "")


async def open_tap(address: ApiAddress, path: str, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """The ``/tap`` WebSocket (a websockets ``ClientConnection``), or :class:`ApiError`."""
    from websockets.asyncio.client import connect, unix_connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    uri = address.ws_uri(path)
    try:
        if address.path is not None:
            return await unix_connect(
                address.path, uri, open_timeout=timeout, max_size=None, compression=None
            )
        return await connect(uri, open_timeout=timeout, max_size=None, compression=None)
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 403 and not address.is_unix:
            raise refused_over_tcp(address, "/tap") from None
        why = _first_line(exc.response.body) or exc.response.reason_phrase
        # 400: a filter the daemon does not know (an unknown route) is the caller's to fix.
        code = EX_USAGE if status == 400 else EX_UNAVAILABLE
        raise ApiError(f"/tap on {address}: HTTP {status}: {why}", code) from None
    except InvalidHandshake as exc:
        raise ApiError(f"/tap on {address}: {exc}") from None
    except OSError as exc:
        raise unreachable(address, exc) from None
