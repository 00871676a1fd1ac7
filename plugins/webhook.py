"""The built-in ``webhook`` handler: an HTTP request per message.

Needs the ``webhook`` extra (``pip install 'wsroute[webhook]'``: httpx, which
runs on anyio). One client per handler keeps a pool of up to
``max_connections`` kept-alive connections, shared by the handler's workers
(``concurrency``).

A message is handled when the server answered 2xx: the request left the
process and the server took it. A 5xx, a 408, a 429 or a transport error
(refused, reset, timed out) is tried again within the same ``handle()``,
``request_retries`` times with doubling delays, honouring ``Retry-After`` when
it fits under ``backoff_max``; what still fails is an **outage**
(:mod:`wsroute.outage`): ``handle()`` raises :class:`WebhookUnavailable` (an
:class:`~wsroute.Unavailable`, with the ``Retry-After``), and the daemon holds
the message and sends it again once the server takes requests, for as long as
it takes or until the handler's ``outage_timeout``. Any other status (a 400, a
404) is a **failure** at once: the same request would fail again; the
handler's ``retries``, then the dead letter. Keep the handler's ``timeout`` (a
delivery key) above what the attempts of one call can take (``request_timeout
× (request_retries + 1)`` plus the delays).

Header values (``Authorization = "Bearer ${credential:hook-token}"``) are
interpolated by the config loader and never logged.

Batches (the handler's ``batch`` key): with ``array = true`` a batch is one
request whose body is a JSON array of the payloads, and a 2xx handles them
all (a failure fails them all: the endpoint cannot say which). Without it, a
batch is one request per message, and each failure is reported alone.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx
import msgspec

from wsroute import Duration, HandlerContext, Message, Unavailable, WsrouteError
from wsroute.net import check_url, redact_url, retry_after
from wsroute.outage import is_outage_status
from wsroute.plugins.sinks import TlsSection, ssl_context
from wsroute.records import record

__all__ = ["WebhookError", "WebhookHandler", "WebhookUnavailable"]

_ERROR_BODY = 200


class WebhookError(WsrouteError, RuntimeError):
    """The server did not take the request: ``status`` is its answer, ``None`` if none came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WebhookUnavailable(WebhookError, Unavailable):
    """The server is unavailable (transport error, 5xx, 408, 429): an outage, not a failure.

    ``retry_after``: the server's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        WebhookError.__init__(self, message, status)
        self.retry_after = retry_after
        self.engine = "webhook"


def _fallback(value: Any) -> Any:
    return str(value)


_encoder = msgspec.json.Encoder(enc_hook=_fallback)


def request_body(message: Message, payload: str) -> tuple[bytes, str]:
    """The request body and its ``Content-Type`` for ``payload = "record"`` or ``"body"``.

    ``record``: the ``jsonl`` record (connection, key, seq, received_at, fields,
    body) as JSON. ``body``: the decoded body alone — JSON as JSON, text as
    ``text/plain``, bytes as ``application/octet-stream``.
    """
    if payload == "record":
        return _encoder.encode(record(message, verbatim=True)), "application/json"
    text = message.body_json
    if text is not None:  # validated JSON, sent as received: the body is never built
        return (text.encode() if isinstance(text, str) else bytes(text)), "application/json"
    body = message.body
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), "application/octet-stream"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return _encoder.encode(body), "application/json"


def array_body(messages: list[Message], payload: str) -> bytes:
    """A batch as one JSON array: each message's record (``payload = "record"``) or
    body (``"body"``: JSON as JSON, text as a string, bytes as base64 text)."""
    if payload == "record":
        return _encoder.encode([record(m, verbatim=True) for m in messages])
    items: list[Any] = []
    for message in messages:
        text = message.body_json
        if text is not None:
            items.append(msgspec.Raw(text))
            continue
        body = message.body
        if isinstance(body, bytes | bytearray | memoryview):
            body = base64.b64encode(body).decode("ascii")
        items.append(body)
    return _encoder.encode(items)


def _retryable(status: int) -> bool:
    return is_outage_status(status)


class WebhookHandler:
    """Send each message to an HTTP endpoint (POST by default, JSON body).

    2xx means handled; 5xx, 408, 429 and transport errors are retried
    ``request_retries`` times with backoff (``Retry-After`` honoured), then
    reported as an outage the daemon waits out; other statuses are failures
    (the daemon's retries, then the dead letter). Keep-alive connection pool, TLS options, header
    values with ``${...}`` secrets.
    """

    @dataclass
    class Options:
        url: str = field(metadata={"doc": "http:// or https:// URL of the endpoint."})
        method: Literal["POST", "PUT", "PATCH"] = field(
            default="POST", metadata={"doc": "HTTP method."}
        )
        headers: dict[str, str] = field(
            default_factory=dict,
            metadata={
                "doc": "Extra request headers (values never logged; ${...} for secrets).",
                "secret": True,
            },
        )
        payload: Literal["record", "body"] = field(
            default="record",
            metadata={
                "doc": "record: the jsonl record as JSON; body: the decoded body alone "
                "(JSON, text or bytes)."
            },
        )
        array: bool = field(
            default=False,
            metadata={
                "doc": "With the handler's batch key: send a batch as one request whose body is "
                "a JSON array of the payloads (records, or JSON bodies); all handled on 2xx. "
                "false: one request per message, also in a batch."
            },
        )
        request_timeout: Duration = field(
            default=Duration(2.0),
            metadata={"doc": "Budget of one request: connect, send, answer."},
        )
        request_retries: int = field(
            default=1,
            metadata={
                "doc": "Tries again after a 5xx, 408, 429 or transport error, within one "
                "handle(); then the daemon waits the outage out."
            },
        )
        backoff: Duration = field(
            default=Duration(0.2), metadata={"doc": "Delay before the first retry; doubles."}
        )
        backoff_max: Duration = field(
            default=Duration(2.0),
            metadata={
                "doc": "Cap on the delay; a longer Retry-After ends the call at once "
                "(the daemon's outage wait honours it)."
            },
        )
        max_connections: int = field(
            default=10, metadata={"doc": "Connections kept open to the server, at most."}
        )
        tls: TlsSection = field(
            default_factory=TlsSection,
            metadata={"doc": "ca_file, cert_file, key_file, verify: as a connection's tls."},
        )
        proxy: str = field(
            default="none",
            metadata={
                "doc": 'none (proxy variables ignored) | env (HTTPS_PROXY...) | "http://..."'
            },
        )

        def __post_init__(self) -> None:
            check_url(self.url, ("http", "https"))
            try:
                httpx.URL(self.url)  # what the client would refuse at the first request
            except httpx.InvalidURL:
                shown = redact_url(self.url)
                raise ValueError(f'url is not a URL httpx can use, got "{shown}"') from None
            if self.request_timeout <= 0:
                raise ValueError("request_timeout must be above 0")
            if self.request_retries < 0:
                raise ValueError(
                    f"request_retries must not be negative, got {self.request_retries}"
                )
            if self.max_connections < 1:
                raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")
            if self.proxy not in ("none", "env") and not self.proxy.startswith(
                ("http://", "https://")
            ):
                raise ValueError(
                    f'proxy must be "none", "env" or an http(s):// URL, '
                    f'got "{redact_url(self.proxy)}"'
                )
            if self.proxy not in ("none", "env"):
                check_url(self.proxy, ("http", "https"), key="proxy")
            for name, value in self.headers.items():
                if "\r" in value or "\n" in value:
                    raise ValueError(f"headers: the value of {name} must not contain a line break")
                if not (value.isascii() and value.isprintable()):
                    # httpx sends ASCII only: refused here rather than at every request.
                    raise ValueError(
                        f"headers: the value of {name} must be printable ASCII (no control "
                        "characters)"
                    )

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self._ctx = ctx
        self._url_for_logs = redact_url(options.url)
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Create the client and its connection pool (nothing is connected yet)."""
        options = self.options
        verify: Any = True
        if options.url.startswith("https://"):
            verify = ssl_context(options.tls, self._ctx.log, f"handlers.{self._ctx.name}.tls")
        self._client = httpx.AsyncClient(
            headers=options.headers,
            timeout=httpx.Timeout(options.request_timeout),
            limits=httpx.Limits(
                max_connections=options.max_connections,
                max_keepalive_connections=options.max_connections,
            ),
            verify=verify,
            trust_env=options.proxy == "env",
            proxy=None if options.proxy in ("none", "env") else options.proxy,
            follow_redirects=False,
        )

    async def stop(self) -> None:
        """Close the pool's connections."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def handle(self, message: Message) -> None:
        """Send the request; return on 2xx, raise :class:`WebhookError` once retries are spent."""
        content, content_type = request_body(message, self.options.payload)
        await self._send(content, content_type, message.connection, message.seq)

    async def handle_batch(self, messages: list[Message]) -> dict[int, BaseException] | None:
        """With ``array``: one request for the batch, a JSON array (a failure fails them all).

        Without: one request per message, one after the other; the failed ones are reported.
        """
        if self.options.array:
            content = array_body(messages, self.options.payload)
            first = messages[0]
            await self._send(content, "application/json", first.connection, first.seq)
            return None
        failures: dict[int, BaseException] = {}
        for index, message in enumerate(messages):
            try:
                await self.handle(message)
            except WebhookUnavailable as exc:
                # The server is down: the rest of the batch waits with this one, unsent.
                for rest in range(index, len(messages)):
                    failures[rest] = exc
                break
            except Exception as exc:
                failures[index] = exc
        return failures or None

    async def _send(self, content: bytes, content_type: str, connection: str, seq: int) -> None:
        client = self._client
        if client is None:
            raise WebhookError("the webhook handler is not started")
        options = self.options
        headers = {"Content-Type": content_type}
        delay: float = options.backoff
        attempt = 0
        while True:
            attempt += 1
            wait: float | None = None
            try:
                response = await client.request(
                    options.method, options.url, content=content, headers=headers
                )
            except httpx.TransportError as exc:
                error = WebhookUnavailable(f"{type(exc).__name__}: {str(exc) or 'no answer'}")
                error.__cause__ = exc
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return
                text = response.text[:_ERROR_BODY].strip()
                said = f"HTTP {status} {response.reason_phrase}" + (f": {text}" if text else "")
                if not _retryable(status):
                    raise WebhookError(said, status)
                wait = retry_after(response.headers)
                error = WebhookUnavailable(said, status, wait)
            if attempt > options.request_retries:
                raise error
            if wait is not None and wait > options.backoff_max:
                # The daemon's outage wait honours it, without holding this call.
                error.args = (f"{error}; Retry-After {wait:g}s is beyond backoff_max",)
                raise error
            pause = max(delay, wait or 0.0)
            self._ctx.log.info(
                "webhook_retry",
                url=self._url_for_logs,
                error=str(error),
                attempt=attempt,
                delay=round(pause, 3),
                connection=connection,
                seq=seq,
            )
            await anyio.sleep(pause)
            delay = min(options.backoff_max, delay * 2)
