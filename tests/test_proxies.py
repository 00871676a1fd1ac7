"""Connections through real proxies: HTTP CONNECT and SOCKS5, written here, on 127.0.0.1.

Each proxy is a small asyncio server that does its handshake by the book,
records what it was asked, and then pipes bytes both ways. The daemon runs
in-process on each event loop (asyncio's and uvloop), to a plain (``ws://``)
and a TLS (``wss://``, a certificate from a test CA) upstream: frames arrive,
the tunnel went where the config said, and the proxy's credentials reached the
proxy only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from wsroute.testing import wait_until

import conftest
from collectors import Collect
from conftest import tcp_server

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return ("asyncio", {"use_uvloop": True}) if request.param == "uvloop" else "asyncio"


@pytest.fixture(autouse=True)
def _reset_collectors() -> None:
    Collect.reset()


@dataclass
class Proxy:
    """What a test proxy saw: the targets it was asked for, the auth it was given."""

    targets: list[tuple[str, int]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    port: int = 0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()


async def _splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter], host: str, port: int
) -> None:
    up_reader, up_writer = await asyncio.open_connection(host, port)
    try:
        await asyncio.gather(_pipe(client[0], up_writer), _pipe(up_reader, client[1]))
    finally:
        up_writer.close()


@contextlib.asynccontextmanager
async def http_proxy() -> AsyncIterator[Proxy]:
    """An HTTP CONNECT proxy: 407 without ``Proxy-Authorization`` when credentials are
    expected is not modelled; it records the header and tunnels."""
    seen = Proxy()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, target, _ = head.split("\r\n", 1)[0].split(" ", 2)
            headers = {}
            for line in head.split("\r\n")[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            seen.auth.append(headers.get("proxy-authorization"))
            host, _, port = target.rpartition(":")
            seen.targets.append((host, int(port)))
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _splice((reader, writer), host, int(port))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async with tcp_server(serve) as port:
        seen.port = port
        yield seen


@contextlib.asynccontextmanager
async def socks5_proxy(
    user: str | None = None, password: str | None = None
) -> AsyncIterator[Proxy]:
    """A SOCKS5 proxy (RFC 1928): no authentication, or username/password (RFC 1929)
    when ``user`` is given; CONNECT to an IPv4 address or a domain name."""
    seen = Proxy()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            version, count = await reader.readexactly(2)
            methods = await reader.readexactly(count)
            assert version == 5
            if user is not None:
                if 2 not in methods:
                    writer.write(b"\x05\xff")
                    return
                writer.write(b"\x05\x02")
                _, size = await reader.readexactly(2)
                name = (await reader.readexactly(size)).decode()
                (size,) = await reader.readexactly(1)
                secret = (await reader.readexactly(size)).decode()
                seen.auth.append(f"{name}:{secret}")
                ok = (name, secret) == (user, password)
                writer.write(b"\x01\x00" if ok else b"\x01\x01")
                if not ok:
                    return
            else:
                seen.auth.append(None)
                writer.write(b"\x05\x00")
            _, command, _, kind = await reader.readexactly(4)
            if kind == 1:
                host = ".".join(str(b) for b in await reader.readexactly(4))
            elif kind == 3:
                (size,) = await reader.readexactly(1)
                host = (await reader.readexactly(size)).decode()
            else:
                writer.write(b"\x05\x08\x00\x01" + bytes(6))
                return
            port = int.from_bytes(await reader.readexactly(2), "big")
            seen.targets.append((host, port))
            if command != 1:
                writer.write(b"\x05\x07\x00\x01" + bytes(6))
                return
            writer.write(b"\x05\x00\x00\x01" + bytes([127, 0, 0, 1]) + port.to_bytes(2, "big"))
            await writer.drain()
            resolved = "127.0.0.1" if host == "localhost" else host
            await _splice((reader, writer), resolved, port)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async with tcp_server(serve) as port:
        seen.port = port
        yield seen


@dataclass
class Upstream:
    url: str
    ca_file: Path | None
    requests: list[dict[str, str]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def upstream(tmp_path: Path, secure: bool) -> AsyncIterator[Upstream]:
    """A websockets server on 127.0.0.1 (TLS with a test CA when ``secure``) sending
    three ticks to each connection."""
    from websockets.asyncio.server import serve

    context = None
    ca_file = None
    if secure:
        import trustme

        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
    made = Upstream("", ca_file)

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        made.requests.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        for number in (1, 2, 3):
            await ws.send(f'{{"type": "tick", "id": {number}}}')
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, ssl=context) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        made.url = f"{'wss' if secure else 'ws'}://localhost:{port}/feed"
        yield made


def config(up: Upstream, proxy: str) -> str:
    tls = f'tls = {{ ca_file = "{up.ca_file}" }}\n' if up.ca_file else ""
    return f"""
[connections.up]
url = "{up.url}"
proxy = "{proxy}"
headers = {{ X-Upstream-Token = "for-the-upstream-only" }}
reconnect = {{ initial = "50ms", max = "100ms" }}
{tls}
[routes.ticks]
key = "tick"
handlers = ["sink"]

[handlers.sink]
plugin = "collectors:Collect"
"""


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
async def test_through_an_http_connect_proxy(tmp_path: Path, secure: bool) -> None:
    async with upstream(tmp_path, secure) as up, http_proxy() as proxy:
        url = f"http://proxyuser:proxy%20pass@127.0.0.1:{proxy.port}"
        async with conftest.running(config(up, url)):
            await wait_until(lambda: len(Collect.seen["sink"]) == 3, timeout=10)
    assert [m.body["id"] for m in Collect.seen["sink"]] == [1, 2, 3]
    port = int(up.url.rsplit(":", 1)[1].split("/")[0])
    assert proxy.targets == [("localhost", port)]
    assert proxy.auth == ["Basic " + base64.b64encode(b"proxyuser:proxy pass").decode()]
    # The upstream got the configured header, and not the proxy's credentials.
    (request,) = up.requests
    assert request["x-upstream-token"] == "for-the-upstream-only"
    assert "proxy-authorization" not in request


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
async def test_through_a_socks5_proxy(tmp_path: Path, secure: bool, scheme: str) -> None:
    async with upstream(tmp_path, secure) as up, socks5_proxy("sockuser", "s0cks") as proxy:
        url = f"{scheme}://sockuser:s0cks@127.0.0.1:{proxy.port}"
        async with conftest.running(config(up, url)):
            await wait_until(lambda: len(Collect.seen["sink"]) == 3, timeout=10)
    assert [m.body["id"] for m in Collect.seen["sink"]] == [1, 2, 3]
    port = int(up.url.rsplit(":", 1)[1].split("/")[0])
    # socks5h: the proxy resolves the name; socks5: wsroute does, and sends the address.
    host = "localhost" if scheme == "socks5h" else "127.0.0.1"
    assert proxy.targets == [(host, port)]
    assert proxy.auth == ["sockuser:s0cks"]


async def test_the_proxy_from_the_environment(tmp_path: Path) -> None:
    """``proxy = "env"``: the proxy variables, as the standard library reads them."""
    async with upstream(tmp_path, False) as up, http_proxy() as proxy:
        environ = {"http_proxy": f"http://127.0.0.1:{proxy.port}", "no_proxy": ""}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environ.items():
                patch.setenv(name, value)
            patch.delenv("all_proxy", raising=False)
            patch.delenv("ALL_PROXY", raising=False)
            async with conftest.running(config(up, "env")):
                await wait_until(lambda: len(Collect.seen["sink"]) == 3, timeout=10)
    assert len(proxy.targets) == 1


async def test_a_refusing_proxy_is_a_failed_attempt_and_retried(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    async with upstream(tmp_path, False) as up, socks5_proxy("right", "pass") as proxy:
        url = f"socks5://wrong:pass@127.0.0.1:{proxy.port}"
        with capture_logs() as logs:
            async with conftest.running(config(up, url)):
                await wait_until(lambda: len(proxy.auth) >= 2, timeout=10)
    failed = [e for e in logs if e.get("event") == "connect_failed"]
    assert failed
    assert "SOCKS5 proxy refused the user name or password" in failed[0]["error"]
    assert not up.requests
