"""The ``jetstream`` source's client: the cluster connection, the stream and the durable consumer.

:class:`ConsumerClient` connects to any server of the cluster (nats-py
reconnects by itself from then on), makes sure the stream exists (created with
``subjects``, ``replicas``, ``retention``, ``duplicate_window`` when asked) and
creates or updates the durable pull consumer: explicit acks, ``ack_wait``, the
start policy and the subject filter. ``max_deliveries`` is the source's to
enforce (:func:`max_deliver`), not JetStream's. Each step is retried through
outages and leader elections with capped, jittered backoff, forever, and logged
once per outage.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError
from structlog.typing import FilteringBoundLogger

from .connection import connect_kwargs, servers_for_logs
from .options import JetStreamOptions

__all__ = ["ConsumerClient", "consumer_config", "describe", "max_deliver"]

T = TypeVar("T")

# Backoff of a failing step: from 0.1 s, doubling, to 5 s, each with +-20% jitter.
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def max_deliver(max_deliveries: int) -> int:
    """JetStream's ``max_deliver`` for the source's ``max_deliveries``: always -1, no limit.

    The source dead-letters the delivery past ``max_deliveries`` (it reads the
    count from each message). A JetStream limit would stop redelivering once it
    is reached — and when that last delivery went to a worker that died before
    writing the dead letter, the message would end neither handled nor
    dead-lettered. Unlimited, JetStream delivers it again until a worker does.
    """
    del max_deliveries
    return -1


def consumer_config(options: JetStreamOptions) -> ConsumerConfig:
    """The durable pull consumer every worker of a pool shares."""
    return ConsumerConfig(
        durable_name=options.durable,
        name=options.durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=float(options.ack_wait),
        max_deliver=max_deliver(options.max_deliveries),
        deliver_policy=DeliverPolicy.ALL if options.deliver == "all" else DeliverPolicy.NEW,
        filter_subject=options.filter_subject or None,
    )


class ConsumerClient:
    """One source's NATS client, its stream and its durable consumer."""

    def __init__(self, options: JetStreamOptions, name: str, log: FilteringBoundLogger) -> None:
        self.options = options
        self.name = name
        self.log = log
        self.client = Client()
        self.js: JetStreamContext | None = None
        self.errors = 0  # failed calls, each retried
        self._failing: str | None = None  # the step failing right now: logged once
        self._quiet = False  # a client error was logged: the next ones of the outage are debug
        self._closing = False
        self._servers = servers_for_logs(options.url)

    async def connect(self) -> JetStreamContext:
        """Connected (once; nats-py reconnects from then on), the stream and consumer set up."""
        if self.js is None:
            kwargs = connect_kwargs(
                self.options,
                name=f"wsroute {self.name}",
                log=self.log,
                where=f"sources.{self.name}",
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
            await self.client.connect(**kwargs)
            self._quiet = False
            self.js = self.client.jetstream(timeout=max(5.0, float(self.options.fetch.wait) + 2))
            self.log.info("nats_connected", servers=self._servers)
        js = self.js
        await self.retry("stream", lambda: self._ensure_stream(js))
        await self.retry(
            "consumer", lambda: js.add_consumer(self.options.stream, consumer_config(self.options))
        )
        return js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        options = self.options
        try:
            await js.stream_info(options.stream)
            return
        except NotFoundError:
            if not options.subjects:
                raise
        await js.add_stream(
            StreamConfig(
                name=options.stream,
                subjects=list(options.subjects),
                num_replicas=options.replicas,
                retention=RetentionPolicy(options.retention),
                storage=StorageType.FILE,
                duplicate_window=float(options.duplicate_window),
            )
        )
        self.log.info(
            "stream_created",
            subjects=options.subjects,
            replicas=options.replicas,
            retention=options.retention,
        )

    async def retry(self, step: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until it succeeds: errors counted, logged once per outage, backed off."""
        delay = _BACKOFF_FIRST
        while True:
            try:
                result = await call()
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                self.failed(step, exc)
                await anyio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            self.recovered(step)
            return result

    def failed(self, step: str, exc: BaseException) -> None:
        """A call failed: an error the first time, debug while the outage lasts."""
        self.errors += 1
        if self._failing is None:
            self._failing = step
            self.log.error("jetstream_unavailable", step=step, error=describe(exc))
        else:
            self.log.debug("jetstream_retry", step=step, error=describe(exc))

    def recovered(self, step: str) -> None:
        if self._failing is not None:
            self.log.info("jetstream_recovered", step=step, failed_at=self._failing)
            self._failing = None

    async def _on_error(self, exc: Exception) -> None:
        # Every failed (re)connect attempt reports here: one warning per outage.
        level = "debug" if self._quiet else "warning"
        self._quiet = True
        getattr(self.log, level)("nats_error", servers=self._servers, error=describe(exc))

    async def _on_disconnected(self) -> None:
        if not self._closing:
            self.log.warning("nats_disconnected", servers=self._servers)

    async def _on_reconnected(self) -> None:
        self._quiet = False
        url: Any = self.client.connected_url
        self.log.info("nats_reconnected", server=f"{url.hostname}:{url.port}" if url else None)

    async def close(self) -> None:
        """Flush what the client holds (acks) and close it."""
        self._closing = True
        if self.client.is_closed:
            return
        with anyio.move_on_after(5, shield=True):
            if self.client.is_connected:
                try:
                    await self.client.flush(timeout=2)
                except (nats.errors.Error, OSError, TimeoutError) as exc:
                    self.log.warning("nats_flush_failed", error=describe(exc))
            await self.client.close()
