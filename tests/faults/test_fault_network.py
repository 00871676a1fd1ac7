"""Faults of the network and the upstream: refused, bad TLS, dropped, silent, flapping, rejecting.

Each test runs the daemon in-process against a real server on 127.0.0.1 and
asserts what the operator is promised: a logged reconnect with a backoff that
grows and is not reset by a connection that did not stay up, never a crash,
and no frame lost that the daemon read before the connection went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from wsroute.connection import ConnectionState
from wsroute.service import Service
from wsroute.testing import free_port, wait_until

from collectors import Collect
from conftest import running
from peers import RawServer, RawSession, events, max_attempts, ws_server

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _reset_collectors() -> None:
    Collect.reset()


BASE = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "2s"

[connections.up]
url = "URL"
close_timeout = "300ms"
reconnect = RECONNECT
EXTRA

[routes.data]
key = "tick"
handlers = ["sink"]

[routes.life]
key = ["$connected", "$disconnected"]
handlers = ["life"]

[handlers.sink]
plugin = "collectors:Collect"
[handlers.life]
plugin = "collectors:Collect"
[handlers.dlq]
plugin = "collectors:Collect"
"""


def config(
    url: str,
    reconnect: str = '{ initial = "50ms", max = "200ms" }',
    extra: str = "",
) -> str:
    return BASE.replace("URL", url).replace("RECONNECT", reconnect).replace("EXTRA", extra)


def delays(logs: Iterable[Mapping[str, Any]]) -> list[float]:
    return [e["delay"] for e in events(logs, "reconnect_scheduled")]


def assert_balanced(service: Service) -> None:
    for name, runner in service.runners.items():
        assert runner.balanced(), (name, runner.snapshot())


def tick(number: int) -> str:
    return json.dumps({"type": "tick", "id": number})


# -- 1. nothing listening ------------------------------------------------------


async def test_refused_upstream_is_retried_with_a_growing_jittered_backoff() -> None:
    url = f"ws://127.0.0.1:{free_port()}/"
    initial, maximum, jitter = 0.02, 0.16, 0.5
    reconnect = f'{{ initial = "{initial}s", max = "{maximum}s", factor = 2.0, jitter = {jitter} }}'
    with capture_logs() as logs:
        async with running(config(url, reconnect)) as svc:
            conn = svc.connections["up"]
            await wait_until(lambda: conn.stats.failed_attempts >= 7, timeout=5)
            assert conn.state in (ConnectionState.WAITING, ConnectionState.CONNECTING)
    assert svc.stopped_cleanly
    failed = events(logs, "connect_failed")
    assert len(failed) >= 7
    assert {e["log_level"] for e in failed} == {"warning"}
    assert all(e["url"] == url for e in failed)
    observed = delays(logs)[:7]
    for attempt, delay in enumerate(observed):
        base = min(maximum, initial * 2**attempt)
        # uniform(base × (1 − jitter), base): grows with each failure, capped at max
        assert base * (1 - jitter) - 1e-3 <= delay <= base + 1e-3, (attempt, observed)
    assert min(observed[4:]) >= maximum * (1 - jitter) - 1e-3
    assert not events(logs, "session_crashed")


# -- 2. a certificate the client cannot verify ----------------------------------


async def test_untrusted_certificate_never_connects_and_retries_at_max_backoff() -> None:
    trustme = pytest.importorskip("trustme")
    cert = trustme.CA().issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    sessions = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal sessions
        sessions += 1
        await ws.wait_closed()

    reconnect = '{ initial = "20ms", max = "80ms", factor = 2.0, jitter = 0.0 }'
    with capture_logs() as logs:
        async with (
            ws_server(handler, ssl=server_ctx) as url,
            running(config(url, reconnect)) as svc,
        ):
            conn = svc.connections["up"]
            await wait_until(lambda: conn.stats.failed_attempts >= 7, timeout=8)
            assert conn.stats.connects == 0
    assert sessions == 0
    errors = events(logs, "tls_error")
    assert len(errors) >= 7
    assert {e["log_level"] for e in errors} == {"error"}
    assert "certificate" in errors[0]["error"]
    observed = delays(logs)
    assert observed[:3] == [0.02, 0.04, 0.08]
    assert set(observed[2:7]) == {0.08}  # stays at max, forever
    assert not events(logs, "connected")


# -- 3. the connection drops mid-stream -----------------------------------------


@pytest.mark.parametrize("how", ["reset", "fin"])
async def test_dropped_connection_reconnects_and_loses_no_frame_it_read(how: str) -> None:
    """1006 twice: a TCP reset (``transport.abort()``), or a FIN without a close frame.

    The peer writes 300 frames per connection and flushes them to the socket
    before it drops; the third connection stays up. Every frame written before
    each drop reaches the handler, and ``seq`` runs on across reconnects.
    """
    per_connection = 300
    sent: list[int] = []

    async def peer(session: RawSession) -> None:
        control = asyncio.ensure_future(session.answer_control())
        try:
            for _ in range(per_connection):
                sent.append(len(sent) + 1)
                await session.text(tick(sent[-1]))
            if session.number <= 2:
                await (session.reset() if how == "reset" else session.fin())
                return
            await control
        finally:
            control.cancel()

    server = RawServer(peer)
    with capture_logs() as logs:
        async with server.serve() as url, running(config(url)) as svc:
            await wait_until(lambda: len(Collect.seen["sink"]) >= 3 * per_connection, timeout=8)
            conn = svc.connections["up"]
            assert conn.stats.reconnects == 2
            assert conn.seq == 3 * per_connection
            assert_balanced(svc)
    assert server.connections == 3
    handled = [m.body["id"] for m in Collect.seen["sink"]]
    assert sorted(handled) == sent  # nothing lost, nothing twice
    assert [m.seq for m in Collect.seen["sink"]] == list(range(1, 3 * per_connection + 1))
    lost = events(logs, "connection_lost")
    assert [e["code"] for e in lost[:2]] == [1006, 1006]
    assert [e["seq"] for e in lost[:2]] == [per_connection, 2 * per_connection]
    life = [m.key for m in Collect.seen["life"]]
    assert life[:5] == ["$connected", "$disconnected"] * 2 + ["$connected"]
    assert not Collect.seen["dlq"]


# -- 4. a half-open peer --------------------------------------------------------


async def test_peer_that_stops_reading_is_detected_within_interval_plus_timeout() -> None:
    silent_at = 0.0
    second_at = 0.0
    release = anyio.Event()

    async def peer(session: RawSession) -> None:
        nonlocal silent_at, second_at
        if session.number == 1:
            for number in range(1, 21):
                await session.text(tick(number))
            await session.flushed()
            session.stop_reading()  # pings pile up unread, no pong
            silent_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await release.wait()
            return
        second_at = time.monotonic()
        await session.text(tick(21))
        await session.answer_control()

    extra = 'ping_interval = "200ms"\nping_timeout = "300ms"'
    server = RawServer(peer)
    with capture_logs() as logs:
        async with server.serve() as url, running(config(url, extra=extra)) as svc:
            await wait_until(lambda: len(Collect.seen["sink"]) >= 21, timeout=8)
            release.set()
            assert_balanced(svc)
    # our close_timeout here is 300 ms, and a close handshake is not waited out anyway
    assert 0 < second_at - silent_at < 0.2 + 0.3 + 1.0
    timeouts = events(logs, "keepalive_timeout")
    assert len(timeouts) == 1
    assert timeouts[0]["log_level"] == "warning"
    lost = events(logs, "connection_lost")[0]
    assert lost["cause"] == "keepalive_timeout"
    assert [m.seq for m in Collect.seen["sink"]] == list(range(1, 22))


# -- 8. a server that accepts and hangs up at once --------------------------------


async def test_accept_then_close_is_not_a_reconnect_storm() -> None:
    accepted: list[float] = []

    async def hang_up(ws: ServerConnection) -> None:
        accepted.append(time.monotonic())  # returning closes with 1000 right away

    initial, maximum, factor, jitter, window = 0.05, 0.4, 2.0, 0.5, 2.0
    reconnect = (
        f'{{ initial = "{initial}s", max = "{maximum}s", factor = {factor}, '
        f'jitter = {jitter}, reset_after = "1s" }}'
    )
    with capture_logs() as logs:
        async with ws_server(hang_up) as url, running(config(url, reconnect)) as svc:
            await wait_until(lambda: bool(accepted), timeout=5)
            await anyio.sleep(window + 0.1)
            in_window = [t for t in accepted if t - accepted[0] <= window]
            assert svc.connections["up"].stats.connects >= 3
    bound = max_attempts(initial, maximum, factor, jitter, window)
    print(f"\naccept-then-close: {len(in_window)} handshakes in {window} s (bound {bound})")
    assert bound <= 15
    assert 3 <= len(in_window) <= bound, (len(in_window), bound)
    # the handshakes succeeded, but no connection stayed up for reset_after: no reset
    lost = events(logs, "connection_lost")
    assert all(e["up_for"] < 1.0 for e in lost)
    observed = delays(logs)
    for attempt, delay in enumerate(observed):
        floor = min(maximum, initial * factor**attempt) * (1 - jitter)
        assert delay >= floor - 1e-3, (attempt, observed)


@pytest.mark.parametrize("code", [1012, 1013])
async def test_service_restart_and_try_again_later_close_codes_slow_down(code: int) -> None:
    accepted: list[float] = []

    async def restart_once(ws: ServerConnection) -> None:
        accepted.append(time.monotonic())
        if len(accepted) == 1:
            await ws.close(code, "come back later")
            return
        await ws.send(tick(1))
        await ws.wait_closed()

    reconnect = '{ initial = "20ms", max = "400ms", factor = 2.0, jitter = 0.0 }'
    with capture_logs() as logs:
        async with ws_server(restart_once) as url, running(config(url, reconnect)):
            await wait_until(lambda: len(Collect.seen["sink"]) == 1, timeout=5)
    lost = events(logs, "connection_lost")[0]
    assert (lost["code"], lost["reason"]) == (code, "come back later")
    assert delays(logs)[0] == 0.4  # the cap (here below the 5 s slow-down), not 20 ms
    assert accepted[1] - accepted[0] >= 0.39


# -- 9. the handshake is refused -----------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_handshake_refused_with_auth_errors_is_logged_and_retried(status: int) -> None:
    attempts: list[float] = []

    def refuse(ws: ServerConnection, request: Request) -> Response:
        attempts.append(time.monotonic())
        return Response(status, "Nope", Headers({"Content-Length": "0"}), b"")

    async def never(ws: ServerConnection) -> None:  # pragma: no cover - never reached
        raise AssertionError("handshake was refused")

    reconnect = '{ initial = "20ms", max = "80ms", factor = 2.0, jitter = 0.0 }'
    with capture_logs() as logs:
        async with ws_server(never, refuse) as url, running(config(url, reconnect)) as svc:
            await wait_until(lambda: len(attempts) >= 5, timeout=5)
            assert svc.connections["up"].stats.connects == 0
    rejected = events(logs, "handshake_rejected")
    assert len(rejected) >= 4
    assert {e["status"] for e in rejected} == {status}
    assert {e["log_level"] for e in rejected} == {"error"}
    assert delays(logs)[:4] == [0.02, 0.04, 0.08, 0.08]
    assert not events(logs, "session_crashed")


@pytest.mark.parametrize("status", [429, 503])
async def test_handshake_throttled_waits_for_retry_after(status: int) -> None:
    attempts: list[float] = []

    def throttle(ws: ServerConnection, request: Request) -> Response | None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return Response(status, "Slow down", Headers({"Retry-After": "1"}), b"")
        return None

    async def accept(ws: ServerConnection) -> None:
        await ws.send(tick(1))
        await ws.wait_closed()

    with capture_logs() as logs:
        async with ws_server(accept, throttle) as url, running(config(url)):
            await wait_until(lambda: len(Collect.seen["sink"]) == 1, timeout=5)
    assert attempts[1] - attempts[0] >= 0.99  # Retry-After, not the 50 ms backoff
    rejected = events(logs, "handshake_rejected")
    assert len(rejected) == 1
    assert rejected[0]["retry_after"] == 1.0
    assert rejected[0]["log_level"] == "warning"
    scheduled = delays(logs)
    assert scheduled[0] >= 1.0


def test_max_attempts_matches_the_backoff_math() -> None:
    # sleeps without jitter: 0.05, 0.1, 0.2, 0.4, 0.4 ... → 1 + 3 + 4 attempts in 1.95 s
    assert max_attempts(0.05, 0.4, 2.0, 0.0, 1.95) == 8
    assert max_attempts(0.05, 0.4, 2.0, 0.5, 2.0) == 13
