"""Pieces the built-in sinks share: a task group of their own, TLS contexts, entry fields.

:class:`PluginTasks` is a task group that lives from a handler plugin's
``start()`` to its ``stop()``. Sinks that supervise something (the
``websocket`` sink's connection, the ``exec`` sink's child process, the
``nats`` sink's first connect) need tasks that outlive ``start()``. The plugin
API has no such hook, and a task group entered in ``start()`` cannot be left in
``stop()``: the daemon's runner opens other cancel scopes around ``stop()``,
and scopes must nest. So the group lives in one host task of its own, created
by :meth:`PluginTasks.open` and cancelled and awaited by
:meth:`PluginTasks.aclose`: nothing started here outlives the plugin, and every
task below the host is structured as usual.

(The host task is an asyncio task: the daemon runs on asyncio only, as do the
Redis and NATS client libraries.)
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import msgspec
from structlog.typing import FilteringBoundLogger

from wsroute import Message
from wsroute.records import encode_record
from wsroute.tls import TlsOptions as TlsSection
from wsroute.tls import tls_context

__all__ = ["PluginTasks", "TlsSection", "entry_fields", "ssl_context"]

_key_encoder = msgspec.json.Encoder()

# What a task group runs: an async function.
TaskFunction = Callable[..., Coroutine[Any, Any, Any]]


def entry_fields(message: Message) -> dict[str, str | bytes]:
    """A message as the flat fields of a Redis stream entry (or of NATS headers plus payload).

    ``frame`` is the raw frame, byte for byte; a text frame is its UTF-8 bytes
    with ``kind = "text"``; a message without a raw frame (lifecycle, emitted,
    replayed, or an empty frame) has ``kind = "message"`` and its ``jsonl``
    record as JSON in ``frame``. Then ``connection``, ``key`` (JSON), ``seq`` and
    ``received_at`` (decimal text), and for a dead letter ``reason``,
    ``handler``, ``error`` and ``attempts``.
    """
    raw = message.raw
    fields: dict[str, str | bytes]
    if isinstance(raw, str) and raw:
        fields = {"frame": raw.encode(), "kind": "text"}
    elif raw:
        fields = {"frame": bytes(raw)}
    else:
        fields = {"frame": encode_record(message)[:-1], "kind": "message"}
    fields["connection"] = message.connection
    fields["key"] = _key_encoder.encode(message.key).decode()
    fields["seq"] = str(message.seq)
    fields["received_at"] = repr(float(message.received_at))
    dead = message.dead_letter
    if dead is not None:
        fields["reason"] = dead.reason
        fields["handler"] = dead.handler or ""
        fields["error"] = dead.error or ""
        fields["attempts"] = str(dead.attempts)
    return fields


def ssl_context(tls: TlsSection, log: FilteringBoundLogger, path: str = "tls") -> ssl.SSLContext:
    """The client TLS context for ``tls = { ca_file, cert_file, key_file, verify }``.

    The same keys, with the same meaning, as a connection's ``tls`` table; turning
    ``verify`` off is logged as a warning, every time a sink starts. A file that
    cannot be loaded raises ConfigError with its key path under ``path``
    (``handlers.NAME.tls``).
    """
    context = tls_context(tls, path)
    if not tls.verify:
        log.warning("tls_verify_disabled")
    return context


class PluginTasks:
    """A plugin's own task group: :meth:`open` in ``start()``, :meth:`aclose` in ``stop()``.

    A task that raises takes the whole group down (that is what a task group
    does), so the tasks started here catch and log their own failures and keep
    going; :meth:`aclose` logs whatever still escaped.
    """

    def __init__(self, log: FilteringBoundLogger) -> None:
        self._log = log
        self._host: asyncio.Task[None] | None = None
        self._group: anyio.abc.TaskGroup | None = None

    async def open(self) -> None:
        """Create the host task and wait until its task group is open."""
        if self._host is not None:
            raise RuntimeError("PluginTasks.open() called twice")
        ready = anyio.Event()
        self._host = asyncio.get_running_loop().create_task(self._run(ready))
        await ready.wait()

    async def _run(self, ready: anyio.Event) -> None:
        async with anyio.create_task_group() as group:
            self._group = group
            ready.set()
            await anyio.sleep_forever()

    def _require(self) -> anyio.abc.TaskGroup:
        if self._group is None or self._group.cancel_scope.cancel_called:
            raise RuntimeError("the plugin's task group is not open")
        return self._group

    async def start(self, fn: TaskFunction, *args: Any, name: str) -> Any:
        """Start ``fn(*args, task_status=...)`` in the group; return what it reports started."""
        return await self._require().start(fn, *args, name=name)

    def start_soon(self, fn: TaskFunction, *args: Any, name: str) -> None:
        """Start ``fn(*args)`` in the group without waiting for it."""
        self._require().start_soon(fn, *args, name=name)

    async def aclose(self) -> None:
        """Cancel every task of the group and wait until they are gone."""
        host, self._host = self._host, None
        if host is None:
            return
        if self._group is not None:
            self._group.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            try:
                await host
            except Exception as exc:  # a task's bug, escaped up to the group
                self._log.error("plugin_task_failed", error=repr(exc))
            except asyncio.CancelledError:  # cancelled before the group opened
                pass
        self._group = None
