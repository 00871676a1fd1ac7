"""The connection runtime against real WebSocket servers on 127.0.0.1.

Every async test runs on both event loops: asyncio's selector loop and uvloop
(``[daemon] event_loop = "uvloop"``).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from wsroute.config import ReconnectSection
from wsroute.connection import Backoff, redact_url, retry_after
from wsroute.demo import ReferenceUpstream
from wsroute.testing import free_port, wait_until

import conftest
from collectors import Collect

pytestmark = pytest.mark.anyio

LOOPS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if inspect.iscoroutinefunction(metafunc.function):
        metafunc.parametrize("anyio_backend", LOOPS)


running = conftest.running


Handler = Callable[[ServerConnection], Awaitable[None]]


@pytest.fixture(autouse=True)
def _reset_collectors() -> None:
    Collect.reset()


@contextlib.asynccontextmanager
async def server(
    handler: Handler,
    process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
    **kw: Any,
) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, process_request=process_request, **kw) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        scheme = "wss" if kw.get("ssl") else "ws"
        yield f"{scheme}://127.0.0.1:{port}/"


REFERENCE = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "2s"

[connections.up]
url = "{url}"
codec = "exchange"
reconnect = {{ initial = "50ms", max = "200ms", reset_after = "10s" }}
{extra}

[[connections.up.on_connect]]
json = {{ role = "admin", user_id = "test1234" }}
[[connections.up.on_connect]]
struct = {{ format = "<i", values = [2] }}
json = ["first", "test"]
[[connections.up.on_connect]]
expect = {{ key = 2, timeout = "2s" }}

[codecs.exchange]
type = "struct"
header = "<i"
fields = ["opcode"]
key = "opcode"

[routes.ticks]
key = 1
handlers = ["ticks"]

[routes.text]
key = ["welcome", "news", 2]
handlers = ["other"]

[routes.life]
key = ["$connected", "$disconnected"]
handlers = ["life"]

[handlers.ticks]
plugin = "collectors:Collect"
[handlers.other]
plugin = "collectors:Collect"
[handlers.life]
plugin = "collectors:Collect"
[handlers.dlq]
plugin = "collectors:Collect"
"""


def reference_config(url: str, extra: str = "") -> str:
    return REFERENCE.format(url=url, extra=extra)


async def test_reference_protocol_is_decoded_and_routed() -> None:
    upstream = ReferenceUpstream(tick_interval=0.005, news_every=5)
    async with upstream.serve() as url, running(reference_config(url)):
        await wait_until(lambda: len(Collect.seen["ticks"]) >= 20)
        await wait_until(lambda: any(m.key == "news" for m in Collect.seen["other"]))
    assert upstream.logins == [{"role": "admin", "user_id": "test1234"}]
    assert upstream.commands[0] == (2, ["first", "test"])
    tick = Collect.seen["ticks"][0]
    assert tick.key == 1
    assert tick.fields == {"opcode": 1}
    assert tick.body["service"] == "first"
    assert isinstance(tick.raw, bytes)
    assert tick.raw[:4] == struct.pack("<i", 1)
    keys = {m.key for m in Collect.seen["other"]}
    assert {"welcome", 2, "news"} <= keys
    seqs = [m.seq for m in Collect.seen["ticks"]]
    assert seqs == sorted(seqs)
    assert seqs[0] >= 1
    assert [m.key for m in Collect.seen["life"]][:1] == ["$connected"]
    assert not Collect.seen["dlq"]


async def test_abrupt_drop_reconnects_and_replays_on_connect() -> None:
    upstream = ReferenceUpstream(tick_interval=0.01, drop_first_after=0.3)
    with capture_logs() as logs:
        async with upstream.serve() as url, running(reference_config(url)) as service:
            await wait_until(lambda: upstream.connections >= 2 and len(upstream.logins) >= 2)
            await wait_until(lambda: [m.key for m in Collect.seen["life"]].count("$connected") >= 2)
            conn = service.connections["up"]
            assert conn.stats.reconnects >= 1
    # login and subscribe replayed on the second connection
    assert upstream.logins[1] == upstream.logins[0]
    assert [c for c in upstream.commands if c[0] == 2][:2] == [(2, ["first", "test"])] * 2
    life = [m.key for m in Collect.seen["life"]]
    assert life[:3] == ["$connected", "$disconnected", "$connected"]
    reconnected = [m for m in Collect.seen["life"] if m.key == "$connected"][1]
    assert reconnected.body["outage"] is not None
    # seq is per connection, never reset by a reconnect
    seqs = [m.seq for m in Collect.seen["ticks"]]
    assert seqs == sorted(set(seqs))
    events = [e["event"] for e in logs]
    assert "connection_lost" in events
    assert "reconnect_scheduled" in events
    lost = next(e for e in logs if e["event"] == "connection_lost")
    assert lost["code"] == 1006


async def test_expect_timeout_closes_and_reconnects() -> None:
    connections = 0

    async def silent(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:  # reads login and subscribe, never answers
                pass

    config = reference_config("{url}").replace('timeout = "2s"', 'timeout = "200ms"')
    with capture_logs() as logs:
        async with server(silent) as url, running(config.replace("{url}", url)):
            await wait_until(lambda: connections >= 2)
    timeouts = [e for e in logs if e["event"] == "expect_timeout"]
    assert timeouts
    assert timeouts[0]["key"] == 2
    assert timeouts[0]["step"] == 2
    assert not Collect.seen["life"]  # never got to $connected


async def test_half_open_peer_is_detected_by_the_keepalive() -> None:
    connections = 0
    first_paused_at = 0.0
    release = anyio.Event()

    async def stops_reading(ws: ServerConnection) -> None:
        nonlocal connections, first_paused_at
        connections += 1
        if connections == 1:
            first_paused_at = time.monotonic()
            ws.transport.pause_reading()  # a peer that stopped reading: pings go unanswered
            await release.wait()
        else:
            await ws.wait_closed()

    config = """
[connections.up]
url = "URL"
ping_interval = "200ms"
ping_timeout = "300ms"
reconnect = { initial = "50ms", max = "100ms" }
close_timeout = "5s"
[routes.all]
handlers = ["h"]
[handlers.h]
plugin = "collectors:Collect"
"""
    with capture_logs() as logs:
        async with (
            server(stops_reading, close_timeout=0.2) as url,
            running(config.replace("URL", url)),
        ):
            await wait_until(lambda: connections >= 2, timeout=10)
            detected_after = time.monotonic() - first_paused_at
            release.set()
    # next attempt within ping_interval + ping_timeout + 1 s, close_timeout not waited out
    assert detected_after < 0.2 + 0.3 + 1.0
    assert any(e["event"] == "keepalive_timeout" for e in logs)


async def test_malformed_frames_are_dead_lettered_and_the_connection_stays_up() -> None:
    connections = 0

    async def bad_frames(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        await ws.recv()
        await ws.send("{not json")
        await ws.send(b"\x01\x00")  # shorter than the header
        await ws.send(struct.pack("<i", 1) + b"[1, 2")  # header fine, body broken
        await ws.send(struct.pack("<i", 1) + json.dumps({"ok": True}).encode())
        await ws.wait_closed()

    config = """
[daemon]
dead_letter = "dlq"
[connections.up]
url = "URL"
codec = "exchange"
[[connections.up.on_connect]]
json = { hello = 1 }
[codecs.exchange]
type = "struct"
header = "<i"
fields = ["opcode"]
[routes.all]
key = 1
handlers = ["h"]
[handlers.h]
plugin = "collectors:Collect"
[handlers.dlq]
plugin = "collectors:Collect"
"""
    with capture_logs() as logs:
        async with server(bad_frames) as url, running(config.replace("URL", url)) as svc:
            await wait_until(lambda: len(Collect.seen["h"]) == 1 and len(Collect.seen["dlq"]) == 3)
            assert svc.connections["up"].stats.decode_errors == 3
    assert connections == 1
    assert Collect.seen["h"][0].body == {"ok": True}
    reasons = {m.dead_letter.reason for m in Collect.seen["dlq"]}  # type: ignore[union-attr]
    assert reasons == {"decode_error"}
    assert [m.seq for m in Collect.seen["dlq"]] == [1, 2, 3]
    assert Collect.seen["dlq"][1].raw == b"\x01\x00"
    assert len([e for e in logs if e["event"] == "frame_undecodable"]) == 3


async def test_a_raising_handler_is_isolated_from_the_others() -> None:
    upstream = ReferenceUpstream(tick_interval=0.005)
    config = (
        reference_config("URL").replace('handlers = ["ticks"]', 'handlers = ["broken", "ticks"]')
        + '[handlers.broken]\nplugin = "collectors:Collect"\nfail_always = true\nretries = 0\n'
    )
    async with upstream.serve() as url, running(config.replace("URL", url)) as svc:
        await wait_until(lambda: len(Collect.seen["ticks"]) >= 20)
        await wait_until(lambda: len(Collect.seen["dlq"]) >= 5)
        broken = svc.runners["broken"]
        assert broken.stats.handled == 0
        assert broken.stats.dead_lettered >= 5
    assert upstream.connections == 1
    assert {m.dead_letter.handler for m in Collect.seen["dlq"]} == {"broken"}  # type: ignore[union-attr]


async def test_handshake_429_honours_retry_after() -> None:
    attempts: list[float] = []

    def limit(ws: ServerConnection, request: Request) -> Response | None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return Response(429, "Too Many Requests", Headers({"Retry-After": "1"}), b"")
        return None

    async def accept(ws: ServerConnection) -> None:
        await ws.wait_closed()

    config = """
[connections.up]
url = "URL"
reconnect = { initial = "50ms", max = "100ms" }
[routes.all]
handlers = ["h"]
[handlers.h]
plugin = "collectors:Collect"
"""
    with capture_logs() as logs:
        async with server(accept, limit) as url, running(config.replace("URL", url)):
            await wait_until(lambda: len(attempts) >= 2, timeout=5)
    assert attempts[1] - attempts[0] >= 0.95  # waited for Retry-After, not the 50 ms backoff
    rejected = next(e for e in logs if e["event"] == "handshake_rejected")
    assert rejected["status"] == 429
    assert rejected["retry_after"] == 1.0


async def test_headers_are_sent_and_never_logged() -> None:
    seen: list[str | None] = []

    def record(ws: ServerConnection, request: Request) -> Response | None:
        seen.append(request.headers.get("Authorization"))
        return None

    async def accept(ws: ServerConnection) -> None:
        await ws.wait_closed()

    config = """
[connections.up]
url = "URL?token=s3cr3t-query&x=1"
headers = { Authorization = "Bearer ${TOKEN}" }
[routes.all]
handlers = ["h"]
[handlers.h]
plugin = "collectors:Collect"
"""
    with capture_logs() as logs:
        async with (
            server(accept, record) as url,
            running(config.replace("URL", url), {"TOKEN": "s3cr3t-token"}),
        ):
            await wait_until(lambda: bool(seen))
    assert seen == ["Bearer s3cr3t-token"]
    dump = repr(logs)
    assert "s3cr3t" not in dump
    assert redact_url(url + "?token=abc&x=1").endswith("?token=***&x=***")
    assert redact_url(url + "?token=abc&x=1", ["x"]).endswith("?token=***&x=1")


async def test_runtime_subscriptions_and_replies_survive_reconnects() -> None:
    received: list[list[Any]] = [[], []]
    connections = 0

    async def echo(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        mine = received[min(connections, 2) - 1]
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"type": "hello"}))
            async for data in ws:
                mine.append(json.loads(data))
                if connections == 1 and len(mine) >= 2:
                    ws.transport.abort()
                    return

    class Subscriber:
        """Subscribes on the first message it sees."""

    config = """
[connections.up]
url = "URL"
reconnect = { initial = "50ms", max = "100ms" }
[routes.hello]
key = "hello"
handlers = ["sub", "replier"]
[handlers.sub]
plugin = "subscriber:Subscriber"
[handlers.replier]
plugin = "collectors:Collect"
reply_json = "up"
"""
    async with server(echo) as url, running(config.replace("URL", url)):
        await wait_until(lambda: connections >= 2 and len(received[1]) >= 2)
    assert {"subscribe": "ticks"} in received[0]
    assert {"echo": "hello"} in received[0]
    assert received[1].count({"subscribe": "ticks"}) == 1  # replayed once after reconnect
    assert {"echo": "hello"} in received[1]


async def test_tls_with_a_custom_ca_and_a_rejected_certificate(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    hellos = 0

    async def hello(ws: ServerConnection) -> None:
        nonlocal hellos
        hellos += 1
        await ws.send(json.dumps({"type": "hello"}))
        await ws.wait_closed()

    good = """
[connections.up]
url = "URL"
tls = { ca_file = "CA" }
[routes.all]
handlers = ["h"]
[handlers.h]
plugin = "collectors:Collect"
"""
    bad = good.replace(
        'tls = { ca_file = "CA" }', 'reconnect = { initial = "50ms", max = "100ms" }'
    )
    async with server(hello, ssl=server_ctx) as url:
        async with running(good.replace("URL", url).replace("CA", str(ca_file))):
            await wait_until(lambda: bool(Collect.seen["h"]))
        with capture_logs() as logs:
            async with running(bad.replace("URL", url)) as svc:
                await wait_until(lambda: svc.connections["up"].stats.failed_attempts >= 2)
    assert hellos == 1
    errors = [e for e in logs if e["event"] == "tls_error"]
    assert errors
    assert errors[0]["log_level"] == "error"
    assert "certificate" in errors[0]["error"]


async def test_idle_timeout_reconnects_a_quiet_connection() -> None:
    connections = 0

    async def quiet(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        await ws.wait_closed()  # answers pings, sends nothing

    config = """
[connections.up]
url = "URL"
idle_timeout = "300ms"
reconnect = { initial = "50ms", max = "100ms" }
[routes.all]
handlers = ["h"]
[handlers.h]
plugin = "collectors:Collect"
"""
    with capture_logs() as logs:
        async with server(quiet) as url, running(config.replace("URL", url)):
            await wait_until(lambda: connections >= 2)
    assert any(e["event"] == "idle_timeout" for e in logs)


async def test_refused_connection_retries_with_growing_backoff() -> None:
    port = free_port()
    config = f"""
[connections.up]
url = "ws://127.0.0.1:{port}/"
reconnect = {{ initial = "20ms", max = "80ms", factor = 2.0, jitter = 0.0 }}
[routes.all]
handlers = ["h"]
[handlers.h]
plugin = "collectors:Collect"
"""
    with capture_logs() as logs:
        async with running(config) as svc:
            await wait_until(lambda: svc.connections["up"].stats.failed_attempts >= 4)
    delays = [e["delay"] for e in logs if e["event"] == "reconnect_scheduled"][:4]
    assert delays == [0.02, 0.04, 0.08, 0.08]
    assert any(e["event"] == "connect_failed" for e in logs)


def test_backoff_is_capped_jittered_and_resets() -> None:
    section = ReconnectSection(initial=1.0, max=8.0, factor=2.0, jitter=0.5)  # type: ignore[arg-type]
    values = iter([0.0, 1.0, 0.5, 0.0, 0.0, 0.0])
    backoff = Backoff(section, rng=lambda: next(values))
    assert [backoff.next() for _ in range(5)] == [1.0, 1.0, 3.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_retry_after_parses_seconds_and_dates() -> None:
    assert retry_after({"Retry-After": "7"}) == 7.0
    assert retry_after({"Retry-After": "Wed, 25 Nov 2026 00:00:10 GMT"}, now=1795564800.0) == 10.0
    assert retry_after({"Retry-After": "soon"}) is None
    assert retry_after({}) is None
    assert retry_after({"Retry-After": "999999"}) == 3600.0
