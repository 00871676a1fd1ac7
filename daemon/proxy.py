"""The tunnel to an upstream through a proxy: HTTP CONNECT, SOCKS5 and SOCKS4.

A connection's ``proxy`` key is ``"none"``, ``"env"`` (the ``HTTP(S)_PROXY``,
``ALL_PROXY``/``SOCKS_PROXY`` and ``NO_PROXY`` variables, read as the standard
library reads them) or a proxy URL: ``http://``, ``https://`` (TLS to the
proxy), ``socks5://`` (the name resolved here), ``socks5h://`` (resolved by the
proxy), ``socks4://``; ``user:password@`` in it is sent to the proxy (Basic
auth, or SOCKS5's username/password). :func:`open_tunnel` returns the socket's
transport once the proxy has connected it to the upstream; TLS to the upstream
and the WebSocket handshake run through it as without a proxy.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .wire import ProxyFailed

__all__ = ["ProxyAddress", "open_tunnel", "parse_proxy", "proxy_for"]

# A proxy's answer to CONNECT is a status line and headers: this much at most.
_MAX_ANSWER = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080, "socks4": 1080}
_SOCKS5_ERRORS = {
    1: "general failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


@dataclass(frozen=True)
class ProxyAddress:
    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None


def parse_proxy(url: str) -> ProxyAddress:
    """A proxy URL's parts; :class:`ProxyFailed` if it is not one we can use."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ProxyFailed(f"proxy scheme {scheme or '(none)'}:// is not supported")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ProxyFailed(f"proxy port: {exc}") from exc
    if not parts.hostname:
        raise ProxyFailed("the proxy URL has no host")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        password = ""
    return ProxyAddress(scheme, parts.hostname, port, username, password)


def proxy_for(setting: str, host: str, port: int, secure: bool) -> ProxyAddress | None:
    """The proxy a connection to ``host:port`` goes through, by its ``proxy`` key."""
    if setting == "none":
        return None
    if setting != "env":
        return parse_proxy(setting)
    if urllib.request.proxy_bypass(f"{host}:{port}"):
        return None
    proxies = urllib.request.getproxies()
    # A SOCKS proxy first, then the HTTPS proxy, then (for ws://) the HTTP one.
    schemes = ["wss", "socks", "https"] if secure else ["ws", "socks", "https", "http"]
    for scheme in schemes:
        url = proxies.get(scheme)
        if url:
            if scheme == "socks" and url.startswith("http://"):
                url = "socks5h://" + url[len("http://") :]
            return parse_proxy(url)
    return None


class _Dialog(asyncio.Protocol):
    """The proxy's side of the conversation, read as it comes (bounded)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.closed: Exception | None = None

    def data_received(self, data: bytes) -> None:
        self.data += data
        self._wake()

    def eof_received(self) -> bool | None:
        self.closed = ProxyFailed("the proxy closed the connection")
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = exc or ProxyFailed("the proxy closed the connection")
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def _more(self) -> None:
        if self.closed is not None:
            raise self.closed
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter

    async def read_exactly(self, size: int) -> bytes:
        while len(self.data) < size:
            await self._more()
        chunk = bytes(self.data[:size])
        del self.data[:size]
        return chunk

    async def read_head(self) -> bytes:
        while (end := self.data.find(b"\r\n\r\n")) < 0:
            if len(self.data) > _MAX_ANSWER:
                raise ProxyFailed("the proxy's answer is too long")
            await self._more()
        head = bytes(self.data[: end + 4])
        del self.data[: end + 4]
        return head


async def open_tunnel(
    proxy: ProxyAddress, host: str, port: int, proxy_tls: ssl.SSLContext | None
) -> tuple[asyncio.Transport, _Dialog]:
    """A transport connected to ``host:port`` through ``proxy`` (the caller sets its
    protocol, after TLS if the upstream is ``wss://``).

    ``proxy_tls`` is the TLS context to the proxy itself (``https://`` proxies).
    Raises :class:`ProxyFailed` or ``OSError``.
    """
    loop = asyncio.get_running_loop()
    dialog = _Dialog()
    transport, _ = await loop.create_connection(
        lambda: dialog,
        proxy.host,
        proxy.port,
        ssl=proxy_tls,
        server_hostname=proxy.host if proxy_tls is not None else None,
    )
    try:
        if proxy.scheme in ("http", "https"):
            await _connect_http(transport, dialog, proxy, host, port)
        elif proxy.scheme in ("socks5", "socks5h"):
            await _connect_socks5(transport, dialog, proxy, host, port)
        else:
            await _connect_socks4(transport, dialog, proxy, host, port)
        if dialog.data:  # the upstream never speaks first (TLS, the WebSocket upgrade)
            raise ProxyFailed("the proxy sent data after its answer")
    except BaseException:
        transport.abort()
        raise
    return transport, dialog


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _connect_http(
    transport: asyncio.Transport, dialog: _Dialog, proxy: ProxyAddress, host: str, port: int
) -> None:
    target = _authority(host, port)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if proxy.username is not None:
        token = f"{proxy.username}:{proxy.password}".encode()
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(token).decode("ascii"))
    transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await dialog.read_head()
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProxyFailed(f"not an HTTP proxy's answer: {status_line[:80]!r}")
    status = int(parts[1])
    if not 200 <= status < 300:
        raise ProxyFailed(f"the proxy refused the tunnel: HTTP {status}")


async def _address(host: str, port: int) -> bytes:
    """``host`` as a SOCKS5 address, resolved here (IPv4 or IPv6)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        ip = ipaddress.ip_address(infos[0][4][0])
    return (b"\x01" if ip.version == 4 else b"\x04") + ip.packed


async def _connect_socks5(
    transport: asyncio.Transport, dialog: _Dialog, proxy: ProxyAddress, host: str, port: int
) -> None:
    methods = b"\x00\x02" if proxy.username is not None else b"\x00"
    transport.write(b"\x05" + bytes([len(methods)]) + methods)
    version, method = await dialog.read_exactly(2)
    if version != 5:
        raise ProxyFailed("not a SOCKS5 proxy")
    if method == 0x02 and proxy.username is not None:
        user = proxy.username.encode()
        password = (proxy.password or "").encode()
        if len(user) > 255 or len(password) > 255:
            raise ProxyFailed("SOCKS5 user name or password longer than 255 bytes")
        transport.write(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        _, status = await dialog.read_exactly(2)
        if status != 0:
            raise ProxyFailed("the SOCKS5 proxy refused the user name or password")
    elif method != 0x00:
        raise ProxyFailed("the SOCKS5 proxy accepts none of our authentication methods")
    if proxy.scheme == "socks5h":
        name = host.encode("idna")
        address = b"\x03" + bytes([len(name)]) + name
    else:
        address = await _address(host, port)
    transport.write(b"\x05\x01\x00" + address + port.to_bytes(2, "big"))
    version, reply, _, kind = await dialog.read_exactly(4)
    if version != 5:
        raise ProxyFailed("not a SOCKS5 proxy")
    if reply != 0:
        why = _SOCKS5_ERRORS.get(reply, f"error {reply}")
        raise ProxyFailed(f"the SOCKS5 proxy refused the tunnel: {why}")
    if kind == 1:
        await dialog.read_exactly(4 + 2)
    elif kind == 4:
        await dialog.read_exactly(16 + 2)
    elif kind == 3:
        (size,) = await dialog.read_exactly(1)
        await dialog.read_exactly(size + 2)
    else:
        raise ProxyFailed("the SOCKS5 proxy answered with an unknown address type")


async def _connect_socks4(
    transport: asyncio.Transport, dialog: _Dialog, proxy: ProxyAddress, host: str, port: int
) -> None:
    address = await _address(host, port)
    if address[0] != 1:
        raise ProxyFailed("SOCKS4 carries IPv4 addresses only")
    user = (proxy.username or "").encode()
    transport.write(b"\x04\x01" + port.to_bytes(2, "big") + address[1:] + user + b"\x00")
    _, reply = (await dialog.read_exactly(8))[:2]
    if reply != 0x5A:
        raise ProxyFailed(f"the SOCKS4 proxy refused the tunnel (code {reply})")
