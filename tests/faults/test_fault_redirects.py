"""Hostile redirects in the handshake: configured secrets never follow them to another origin.

An upstream answers the upgrade with a 3xx and a ``Location`` on another port
(another origin) or on the same one; the servers here are hand-written, record
every request's headers, and run on 127.0.0.1. wsroute follows redirects
itself on both transports, by the connection's ``redirects`` key: the
``Authorization`` and custom headers, and the URL's ``user:password@`` (sent
as Basic auth), go to the configured origin only; every redirect is logged,
without the secrets; a refused one is a failed attempt, retried with backoff.
Each test runs with the ``Authorization`` coming from a header and from the
URL's user info (both at once is a config error), a custom header beside it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from structlog.testing import capture_logs

from wsroute.testing import wait_until
from wsroute.transport import MAX_REDIRECTS

from collectors import Collect
from conftest import running, tcp_server
from peers import OP_TEXT, accept_key, events, frame

pytestmark = pytest.mark.anyio

TRANSPORTS = [
    "websockets",
]

BEARER = "Bearer hdr-s3cret-token"
API_KEY = "apikey-s3cret-value"
USER, PASSWORD = "feeduser", "url-s3cret-pw"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = (BEARER, "hdr-s3cret-token", API_KEY, PASSWORD, BASIC)

Logs = list[MutableMapping[str, Any]]


@pytest.fixture(autouse=True)
def _reset_collectors() -> None:
    Collect.reset()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


#: Where the ``Authorization`` comes from: a configured header, or the URL's user info.
CREDENTIALS = {"header": BEARER, "userinfo": BASIC}


@pytest.fixture(params=sorted(CREDENTIALS))
def credential(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Request:
    path: str
    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Upstream:
    """A raw HTTP/WebSocket server: each path either redirects or upgrades.

    ``redirects`` maps a path to ``(status, Location)``; any other path is
    upgraded (101), sent one JSON tick and kept open until the client leaves
    (10 s at most). Every request is recorded with its raw header lines.
    """

    redirects: dict[str, tuple[int, str]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    @property
    def origin(self) -> str:
        return f"127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = []
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers.append((name.strip(), value.strip()))
                self.requests.append(Request(path, headers))
                if path in self.redirects:
                    status, location = self.redirects[path]
                    writer.write(
                        f"HTTP/1.1 {status} Moved\r\nLocation: {location}\r\n"
                        "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
                    )
                    await writer.drain()
                    return
                key = next(v for k, v in headers if k.lower() == "sec-websocket-key")
                writer.write(
                    (
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
                    ).encode()
                    + frame(OP_TEXT, json.dumps({"type": "tick", "id": 1}).encode())
                )
                await writer.drain()
                while await reader.read(4096):  # until the client closes (bounded above)
                    pass
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[Upstream]:
        async with tcp_server(self._serve) as port:
            self.port = port
            yield self


CONFIG = """
[daemon]
shutdown_timeout = "2s"

[connections.up]
url = "URL"
transport = "TRANSPORT"
compression = "none"
close_timeout = "300ms"
open_timeout = "3s"
reconnect = { initial = "50ms", max = "200ms" }
HEADERS
POLICY

[routes.data]
key = "tick"
handlers = ["sink"]

[handlers.sink]
plugin = "collectors:Collect"
"""


def config(start: Upstream, path: str, transport: str, policy: str | None, credential: str) -> str:
    userinfo = f"{USER}:{PASSWORD}@" if credential == "userinfo" else ""
    headers = f'X-Api-Key = "{API_KEY}"'
    if credential == "header":
        headers = f'Authorization = "{BEARER}", {headers}'
    return (
        CONFIG.replace("URL", f"ws://{userinfo}{start.origin}{path}")
        .replace("TRANSPORT", transport)
        .replace("HEADERS", f"headers = {{ {headers} }}")
        .replace("POLICY", f'redirects = "{policy}"' if policy else "")
    )


def no_secrets_in(logs: Logs) -> None:
    dump = repr(logs)
    for secret in SECRETS:
        assert secret not in dump


def credentials_of(request: Request) -> list[str]:
    """Every configured secret that reached a server in this request."""
    sent = request.values("Authorization") + request.values("X-Api-Key")
    return [value for value in sent if value in (BEARER, API_KEY, BASIC)]


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_same_origin_refuses_another_origin_and_sends_it_nothing(
    transport: str, credential: str, status: int
) -> None:
    async with Upstream().serve() as other:
        first = Upstream(redirects={"/feed": (status, f"ws://{other.origin}/elsewhere")})
        async with first.serve():
            with capture_logs() as logs:
                async with running(
                    config(first, "/feed", transport, None, credential)
                ):  # the default
                    await wait_until(lambda: len(events(logs, "redirect_refused")) >= 2, 5)
        assert other.requests == []
        assert Collect.seen["sink"] == []
        # The configured origin did get the credentials: that is where they belong.
        assert set(credentials_of(first.requests[0])) == {CREDENTIALS[credential], API_KEY}
    refused = events(logs, "redirect_refused")[0]
    assert refused["url"] == f"ws://{other.origin}/elsewhere"
    assert refused["status"] == status
    assert refused["connection"] == "up"
    assert "another origin" in refused["reason"]
    # A failed attempt like any other: logged, then the backoff.
    assert events(logs, "connect_failed")
    assert events(logs, "reconnect_scheduled")
    assert not events(logs, "redirect_followed")
    no_secrets_in(logs)


async def test_same_origin_redirect_is_followed_with_the_credentials(
    transport: str, credential: str
) -> None:
    start = Upstream(redirects={"/old?jwt=q-s3cret-jwt": (307, "/new?page=2")})
    async with start.serve():
        with capture_logs() as logs:
            text = config(start, "/old?jwt=q-s3cret-jwt", transport, "same-origin", credential)
            async with running(text):
                await wait_until(lambda: len(Collect.seen["sink"]) >= 1, 5)
    assert start.paths()[:2] == ["/old?jwt=q-s3cret-jwt", "/new?page=2"]
    followed = start.requests[1]
    assert followed.values("Authorization") == [CREDENTIALS[credential]]
    assert followed.values("X-Api-Key") == [API_KEY]
    [event] = events(logs, "redirect_followed")[:1]
    assert event["url"] == f"ws://{start.origin}/new?page=***"
    assert (event["status"], event["same_origin"], event["credentials"]) == (307, True, "sent")
    assert event["connection"] == "up"
    assert "q-s3cret-jwt" not in repr(logs)
    no_secrets_in(logs)


async def test_any_reaches_another_origin_without_any_credential(
    transport: str, credential: str
) -> None:
    async with Upstream().serve() as other:
        start = Upstream(redirects={"/feed": (302, f"ws://{other.origin}/moved")})
        async with start.serve():
            with capture_logs() as logs:
                async with running(config(start, "/feed", transport, "any", credential)):
                    await wait_until(lambda: len(Collect.seen["sink"]) >= 1, 5)
    assert other.paths()[:1] == ["/moved"]
    for request in other.requests:
        assert request.values("Authorization") == []
        assert request.values("X-Api-Key") == []
        assert credentials_of(request) == []
        dump = repr(request.headers)
        for secret in SECRETS:
            assert secret not in dump
    followed = events(logs, "redirect_followed")[0]
    assert followed["url"] == f"ws://{other.origin}/moved"
    assert (followed["same_origin"], followed["credentials"]) == (False, "dropped")
    no_secrets_in(logs)


async def test_any_never_resends_credentials_after_leaving_the_origin(
    transport: str, credential: str
) -> None:
    # start -> other origin -> back to start: what the other origin pointed at gets nothing.
    async with Upstream().serve() as other:
        start = Upstream()
        async with start.serve():
            start.redirects["/feed"] = (302, f"ws://{other.origin}/bounce")
            other.redirects["/bounce"] = (302, f"ws://{start.origin}/back")
            with capture_logs() as logs:
                async with running(config(start, "/feed", transport, "any", credential)):
                    await wait_until(lambda: len(Collect.seen["sink"]) >= 1, 5)
    assert start.paths()[:2] == ["/feed", "/back"]
    assert credentials_of(start.requests[1]) == []
    assert [e["credentials"] for e in events(logs, "redirect_followed")[:2]] == [
        "dropped",
        "dropped",
    ]
    no_secrets_in(logs)


async def test_none_follows_no_redirect_at_all(transport: str, credential: str) -> None:
    start = Upstream(redirects={"/old": (301, "/new")})
    async with start.serve():
        with capture_logs() as logs:
            async with running(config(start, "/old", transport, "none", credential)):
                await wait_until(lambda: len(events(logs, "redirect_refused")) >= 2, 5)
    assert set(start.paths()) == {"/old"}
    assert Collect.seen["sink"] == []
    refused = events(logs, "redirect_refused")[0]
    assert refused["url"] == f"ws://{start.origin}/new"
    assert refused["reason"] == 'redirects = "none"'
    no_secrets_in(logs)


async def test_a_redirect_loop_stops_after_the_cap_and_is_retried_with_backoff(
    transport: str, credential: str
) -> None:
    start = Upstream(redirects={"/loop": (302, "/loop")})
    async with start.serve():
        with capture_logs() as logs:
            async with running(config(start, "/loop", transport, None, credential)):
                await wait_until(lambda: len(events(logs, "reconnect_scheduled")) >= 1, 10)
    failed = events(logs, "connect_failed")[0]
    assert f"more than {MAX_REDIRECTS} redirects" in failed["error"]
    # One attempt: the first request and MAX_REDIRECTS redirects followed, no more.
    assert len(events(logs, "redirect_followed")) >= MAX_REDIRECTS
    assert len(start.requests) <= (MAX_REDIRECTS + 1) * (
        len(events(logs, "reconnect_scheduled")) + 1
    )
    no_secrets_in(logs)


# -- the decision alone: origins, downgrades, user info in a Location --------------------


class _Log:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.records.append((event, kw))

    warning = info


def _decide(
    url: str, location: str, policy: str = "same-origin", status: int = 302
) -> tuple[str, bool, list[tuple[str, dict[str, Any]]]]:
    from wsroute.config import ConnectionSection
    from wsroute.transport import HandshakeRejected, RedirectRefused, _follow, _origin

    section = ConnectionSection(url=url, redirects=policy)  # type: ignore[arg-type]
    log = _Log()
    rejected = HandshakeRejected(status, {"Location": location})
    try:
        target, send = _follow(section, log, rejected, url, location, _origin(url), True, 1)
    except RedirectRefused:
        return "", False, log.records
    return target, send, log.records


def test_default_ports_are_the_same_origin() -> None:
    assert _decide("ws://example.com/a", "ws://EXAMPLE.com:80/b")[:2] == (
        "ws://EXAMPLE.com:80/b",
        True,
    )
    assert _decide("wss://example.com/a", "wss://example.com:443/b")[1] is True
    # Another scheme is another origin, even on the same host.
    assert _decide("ws://example.com/a", "wss://example.com/b")[0] == ""
    assert _decide("ws://example.com/a", "wss://example.com/b", "any")[:2] == (
        "wss://example.com/b",
        False,
    )


def test_wss_is_never_redirected_to_ws_even_with_any() -> None:
    target, _, records = _decide("wss://example.com/a", "ws://example.com/b", "any")
    assert target == ""
    assert records[0][0] == "redirect_refused"
    assert records[0][1]["reason"] == "wss:// redirected to ws://"


def test_user_info_in_a_location_is_dropped_and_never_logged() -> None:
    target, send, records = _decide(
        "ws://example.com/a", "ws://evil:l0cation-pw@example.com/b?token=loc-s3cret"
    )
    assert (target, send) == ("ws://example.com/b?token=loc-s3cret", True)
    assert records[0][1]["url"] == "ws://example.com/b?token=***"
    assert "l0cation-pw" not in repr(records)
    assert "loc-s3cret" not in repr(records)


def test_a_location_that_is_not_a_websocket_url_is_refused() -> None:
    target, _, records = _decide("ws://example.com/a", "https://example.com/b", "any")
    assert target == ""
    assert records[0][1]["reason"] == "not a ws:// or wss:// URL"
