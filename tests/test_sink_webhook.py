"""The ``webhook`` sink against a real HTTP/1.1 server on 127.0.0.1 (anyio, in the test's loop).

The server answers from a script of statuses, can hang, serves TLS with a
trustme CA, and is stopped and started again for an outage.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import trustme
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.tls import TLSListener
from structlog.testing import capture_logs

from wsroute import ConfigError, Unavailable
from wsroute.plugins.webhook import WebhookError, WebhookHandler, request_body
from wsroute.testing import ScriptedUpstream, build_handler, free_port, message, run_outage


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpServer:
    """A small HTTP/1.1 server with keep-alive; answers with ``script`` then ``default``."""

    port: int = field(default_factory=free_port)
    script: deque[tuple[int, dict[str, str]] | str] = field(default_factory=deque)
    default: int = 200
    #: Headers of the ``default`` answer (``Retry-After``).
    default_headers: dict[str, str] = field(default_factory=dict)
    #: Answers a request on its own terms first: a status for it, or None.
    refuse: Callable[[Request], int | None] | None = None
    requests: list[Request] = field(default_factory=list)
    #: Each request's answer: ``(request, status)``.
    answered: list[tuple[Request, int]] = field(default_factory=list)
    connections: int = 0
    tls: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[HttpServer]:
        listener: anyio.abc.Listener[Any] = await anyio.create_tcp_listener(
            local_host="127.0.0.1", local_port=self.port
        )
        if self.tls is not None:
            listener = TLSListener(listener, self.tls, standard_compatible=False)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self._connection)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()  # the outage: every connection goes too

    async def _connection(self, stream: anyio.abc.ByteStream) -> None:
        self.connections += 1
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            while True:
                try:
                    head = await reader.receive_until(b"\r\n\r\n", 65536)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                    return
                request_line, *lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.receive_exactly(int(headers.get("content-length", "0")))
                request = Request(method, path, headers, body)
                self.requests.append(request)
                answer = self.script.popleft() if self.script else (self.default, {})
                if answer == "hang":
                    await anyio.sleep_forever()
                assert isinstance(answer, tuple)
                status, extra = answer
                if not self.script and status == self.default:
                    extra = dict(self.default_headers)
                refused = self.refuse(request) if self.refuse is not None else None
                if refused is not None:
                    status, extra = refused, {}
                self.answered.append((request, status))
                text = f"status {status}".encode()
                out = [f"HTTP/1.1 {status} Whatever", f"Content-Length: {len(text)}"]
                out += [f"{k}: {v}" for k, v in extra.items()]
                await stream.send(("\r\n".join(out) + "\r\n\r\n").encode() + text)


@asynccontextmanager
async def started(options: dict[str, Any]) -> AsyncIterator[WebhookHandler]:
    handler: WebhookHandler = build_handler("webhook", options)
    await handler.start()
    try:
        yield handler
    finally:
        await handler.stop()


# --------------------------------------------------------------------------- bodies, options


def test_request_bodies() -> None:
    msg = message({"p": 1}, key="tick", connection="up", seq=4, received_at=2.5)
    body, kind = request_body(msg, "record")
    assert kind == "application/json"
    assert json.loads(body) == {
        "connection": "up",
        "key": "tick",
        "seq": 4,
        "received_at": 2.5,
        "fields": {},
        "body": {"p": 1},
    }
    assert request_body(msg, "body") == (b'{"p":1}', "application/json")
    assert request_body(message("hi"), "body") == (b"hi", "text/plain; charset=utf-8")
    assert request_body(message(b"\x00"), "body") == (b"\x00", "application/octet-stream")


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="http://"):
        build_handler("webhook", {"url": "ftp://x"})
    with pytest.raises(ConfigError, match="line break"):
        build_handler("webhook", {"url": "http://x", "headers": {"X-A": "a\r\nb"}})
    with pytest.raises(ConfigError, match="proxy"):
        build_handler("webhook", {"url": "http://x", "proxy": "socks5://p"})


CHECK_CONFIG = '[handlers.q]\nplugin = "webhook"\nurl = "http://127.0.0.1/"\n'


def test_missing_extra_is_named_by_check(tmp_path: Path) -> None:
    # The client library hidden from a real `wsroute check` in a subprocess.
    config = tmp_path / "wsroute.toml"
    config.write_text(CHECK_CONFIG)
    code = (
        "import sys; sys.modules['httpx'] = None; from wsroute.cli import main; "
        "sys.exit(main(['check', '-c', sys.argv[1]]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78
    assert "pip install 'wsroute[webhook]'" in result.stderr


# --------------------------------------------------------------------------- real HTTP


@pytest.mark.anyio
async def test_posts_the_record_with_headers_over_one_connection() -> None:
    async with HttpServer().running() as server:
        options = {"url": server.url, "headers": {"Authorization": "Bearer s3cret"}}
        async with started(options) as handler:
            for seq in (1, 2, 3):
                await handler.handle(message({"n": seq}, seq=seq))
    assert [r.method for r in server.requests] == ["POST"] * 3
    first = server.requests[0]
    assert (first.path, first.headers["authorization"]) == ("/hook", "Bearer s3cret")
    assert first.headers["content-type"] == "application/json"
    assert [json.loads(r.body)["body"]["n"] for r in server.requests] == [1, 2, 3]
    assert server.connections == 1  # kept alive, from the pool


@pytest.mark.anyio
async def test_5xx_and_429_are_retried_within_the_call() -> None:
    server = HttpServer()
    server.script.extend([(500, {}), (429, {"Retry-After": "0"})])
    async with server.running():
        options = {"url": server.url, "request_retries": 2, "backoff": "10ms"}
        async with started(options) as handler:
            await handler.handle(message({"n": 1}))
    assert len(server.requests) == 3


@pytest.mark.anyio
async def test_retries_spent_raise_with_the_status() -> None:
    server = HttpServer(default=503)
    async with server.running():
        options = {"url": server.url, "request_retries": 1, "backoff": "10ms"}
        async with started(options) as handler:
            with pytest.raises(WebhookError, match="HTTP 503") as info:
                await handler.handle(message({}))
    assert info.value.status == 503
    assert isinstance(info.value, Unavailable)  # an outage: the daemon waits it out
    assert len(server.requests) == 2


@pytest.mark.anyio
async def test_a_client_error_is_not_retried() -> None:
    server = HttpServer(default=404)
    async with server.running(), started({"url": server.url, "request_retries": 3}) as handler:
        with pytest.raises(WebhookError, match="HTTP 404") as info:
            await handler.handle(message({}))
    assert not isinstance(info.value, Unavailable)  # a failure: retries, then the dead letter
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_a_long_retry_after_fails_at_once() -> None:
    server = HttpServer()
    server.script.append((429, {"Retry-After": "120"}))
    async with server.running(), started({"url": server.url, "backoff_max": "1s"}) as handler:
        with (
            pytest.raises(WebhookError, match="Retry-After 120s is beyond backoff_max") as info,
            anyio.fail_after(1),  # not even backoff_max
        ):
            await handler.handle(message({}))
    assert len(server.requests) == 1  # no retry within the call
    assert isinstance(info.value, Unavailable)
    assert info.value.retry_after == 120  # the daemon's outage wait honours it


@pytest.mark.anyio
async def test_a_hanging_server_times_out() -> None:
    server = HttpServer()
    server.script.append("hang")
    async with server.running():
        options = {"url": server.url, "request_timeout": "200ms", "request_retries": 0}
        async with started(options) as handler:
            with pytest.raises(WebhookError, match="Timeout"):
                await handler.handle(message({}))


@pytest.mark.anyio
async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with HttpServer(tls=server_context).running() as server:
        async with started({"url": server.url, "tls": {"ca_file": str(ca_file)}}) as handler:
            await handler.handle(message({"n": 1}))
        async with started({"url": server.url, "request_retries": 0}) as handler:
            with pytest.raises(WebhookError, match=r"(?i)certificate"):
                await handler.handle(message({"n": 2}))  # the system store does not know it
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- the daemon, an outage

CONFIG = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "5s"

[connections.up]
url = "${WSROUTE_UPSTREAM}"
codec = "json"
ping_interval = 0

[routes.all]
handlers = ["hook"]

[handlers.hook]
plugin = "webhook"
url = "${HOOK_URL}"
headers = { Authorization = "Bearer ${HOOK_TOKEN}" }

[handlers.dlq]
plugin = "jsonl"
path = "${WSROUTE_TMP}/dead.jsonl"
"""


def _n(request: Request) -> int:
    n: int = json.loads(request.body)["body"]["n"]
    return n


@pytest.mark.anyio
async def test_an_outage_holds_the_message_then_delivers_it(wsroute_daemon: Any) -> None:
    server = HttpServer()
    env = {"HOOK_URL": server.url, "HOOK_TOKEN": "t0ken"}
    async with wsroute_daemon(CONFIG, upstream=ScriptedUpstream(), environ=env) as daemon:
        outage = await run_outage(
            daemon, "hook", serve=server.running, delivered=lambda: len(server.requests)
        )
        dead_file = daemon.tmp_path / "dead.jsonl"
    assert [_n(r) for r in server.requests] == [1, 2, 3]
    assert {r.headers["authorization"] for r in server.requests} == {"Bearer t0ken"}
    assert outage.down["failures"] == 0  # refused connections: an outage, not failures
    assert not dead_file.exists() or not dead_file.read_text()


@pytest.mark.anyio
async def test_refused_then_503_retry_after_then_back_delivers_each_once(
    wsroute_daemon: Any,
) -> None:
    """Down 3 s, then 503 with Retry-After: 1 for 2 s, then up; frames sent throughout,
    one of which the endpoint answers 400: only that one is dead-lettered."""
    server = HttpServer(refuse=lambda r: 400 if _n(r) == 5 else None)
    upstream = ScriptedUpstream()
    env = {"HOOK_URL": server.url, "HOOK_TOKEN": "t"}
    count = 0

    async def send(seconds: float) -> None:
        nonlocal count
        for _ in range(round(seconds / 0.1)):
            count += 1
            await upstream.send(json.dumps({"type": "tick", "n": count}))
            await anyio.sleep(0.1)

    with capture_logs() as logs:
        async with wsroute_daemon(CONFIG, upstream=upstream, environ=env) as daemon:
            await daemon.wait_until(lambda: upstream.connected == 1)
            async with server.running():
                await send(1.0)  # 10 frames, n = 5 refused with a 400
                await daemon.wait_until(lambda: daemon.stats("hook")["handled"] == 9, 5)
                assert daemon.stats("hook")["dead_lettered"] == 1
            await send(3.0)  # refused: connection refused
            assert daemon.stats("hook")["outage"] == 1
            server.default, server.default_headers = 503, {"Retry-After": "1"}
            async with server.running():
                await send(2.0)  # 503, Retry-After: 1
                assert daemon.stats("hook")["outage"] == 1
                server.default, server.default_headers = 200, {}
                await send(0.5)
                await daemon.wait_until(lambda: daemon.stats("hook")["handled"] == count - 1, 15)
            stats = daemon.stats("hook")
            dead_file = daemon.tmp_path / "dead.jsonl"
    taken = [_n(request) for request, status in server.answered if status == 200]
    assert sorted(taken) == [n for n in range(1, count + 1) if n != 5]  # each exactly once
    assert any(status == 503 for _, status in server.answered)
    dead = [json.loads(line) for line in dead_file.read_text().splitlines()]
    assert [(d["body"]["n"], d["reason"]) for d in dead] == [(5, "handler_error")]
    assert stats["dead_lettered"] == 1
    assert stats["failures"] == 4  # the 400: the first attempt and the default 3 retries
    assert len([e for e in logs if e["event"] == "webhook_unavailable"]) == 1
    [recovered] = [e for e in logs if e["event"] == "webhook_recovered"]
    assert recovered["down_for"] >= 5.0
