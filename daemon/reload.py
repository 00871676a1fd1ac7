"""Reload: a new config applied as a diff, completely or not at all.

The diff is :func:`~wsroute.reload_plan.reload_plan`'s (pure: which handlers,
connections and sources are kept, restarted, added, removed). :func:`apply`
carries it out through the operations the daemon's owner offers
(:class:`Reloadable`, which :class:`~wsroute.service.Service` implements): it
first builds and starts everything the new config needs next to the running
one — new and changed handler runners (their ``start()``), new and changed
connections (their TLS contexts), new and changed sources. If any of that
fails, what was started is stopped again and the problems are returned:
nothing of the running config was touched. Only then does it commit: the owner
swaps the runner table and the router (one assignment each), changed
connections and sources restart, and retired handlers drain within
``shutdown_timeout`` (the rest dead-lettered as ``removed``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

import anyio
import structlog

from .config import ApiSection, Config
from .connection import Connection
from .exceptions import ConfigError, PluginError
from .handler import HandlerRunner
from .plan import Plan
from .reload_plan import ReloadPlan
from .shutdown import drain_all, log_handler_totals
from .sources import SourceSupervisor
from .wiring import dead_letter_targets

__all__ = ["Reloadable", "apply"]

log = structlog.get_logger("wsroute.service")


class Reloadable(Protocol):
    """What :func:`apply` asks of the daemon's owner: reads, builders, and named changes."""

    @property
    def config(self) -> Config: ...
    @property
    def runners(self) -> Mapping[str, HandlerRunner]: ...
    @property
    def connections(self) -> Mapping[str, Connection]: ...
    @property
    def sources(self) -> Mapping[str, SourceSupervisor]: ...

    def build_runner(self, plan: Plan, name: str) -> HandlerRunner: ...
    def build_connection(self, plan: Plan, name: str) -> Connection: ...
    def build_source(self, plan: Plan, name: str) -> SourceSupervisor: ...

    async def start_runner(self, runner: HandlerRunner) -> None:
        """Start a runner (its plugin's ``start()``) in the daemon's task group."""

    async def prepare_api(self, section: ApiSection) -> list[str]:
        """Open the API's new listen addresses next to the old ones; the problems."""

    async def commit(self, plan: Plan, runners: dict[str, HandlerRunner]) -> list[HandlerRunner]:
        """Switch to ``plan`` and ``runners``; the runners it retires (still draining)."""

    def remove_connection(self, name: str) -> Connection: ...
    async def add_connection(self, conn: Connection) -> None: ...
    def remove_source(self, name: str) -> SourceSupervisor: ...
    async def add_source(self, source: SourceSupervisor) -> None: ...

    def retired_runner(self, runner: HandlerRunner) -> None:
        """A retired runner finished: keep its counts for the API's figures."""


async def apply(owner: Reloadable, new_plan: Plan, changes: ReloadPlan) -> list[str]:
    """Carry out ``changes`` towards ``new_plan``; unchanged connections keep their socket.

    All or nothing: first everything the new config needs is built and
    started next to the running config (new and changed handlers' ``start()``,
    TLS contexts of new and changed connections, source instances). If any of
    it fails, what was started is stopped again, nothing of the old config has
    been touched, and the problems are returned (one per key path). Only then
    is the old config retired.
    """
    new = new_plan.config
    handlers, connections, sources = changes.handlers, changes.connections, changes.sources
    # 1. prepare, next to the running config (in the new config's order)
    problems: list[str] = []
    fresh: dict[str, HandlerRunner] = {}
    for name in (n for n in new.handlers if n in handlers.started):
        try:
            fresh[name] = owner.build_runner(new_plan, name)
        except Exception as exc:
            problems.append(f"handlers.{name}: could not create: {exc}")
    built: dict[str, Connection] = {}
    for name in (n for n in new.connections if n in connections.started):
        try:
            built[name] = owner.build_connection(new_plan, name)
        except ConfigError as exc:  # a TLS file that cannot be loaded
            problems.extend(str(issue) for issue in exc.issues)
        except Exception as exc:
            problems.append(f"connections.{name}: {_short_error(exc)}")
    new_sources: dict[str, SourceSupervisor] = {}
    for name in (n for n in new_plan.sources if n in sources.started):
        try:
            new_sources[name] = owner.build_source(new_plan, name)
        except Exception as exc:
            problems.append(f"sources.{name}: could not create: {exc}")
    if problems:
        return problems
    runners = {name: owner.runners[name] for name in handlers.kept} | fresh
    targets = dead_letter_targets(new, runners)
    for name, runner in fresh.items():
        runner.dead_letter = targets[name]
    running: list[HandlerRunner] = []
    for name in sorted(fresh, key=lambda n: fresh[n].dead_letter is not None):
        try:
            await owner.start_runner(fresh[name])
        except Exception as exc:  # start() failed: PluginError names the handler
            problems.append(str(exc) if isinstance(exc, PluginError) else repr(exc))
            break
        running.append(fresh[name])
    # the API's new listen addresses are opened next to the old ones
    if not problems:
        problems = await owner.prepare_api(new.daemon.api)
    if problems:
        for runner in reversed(running):  # nothing was routed to them yet
            await runner.stop_workers("removed")
        return problems
    # 2. commit: from here on nothing can fail for want of a resource
    retired = await owner.commit(new_plan, runners)
    # 3. connections: keep the unchanged ones open, restart the changed ones
    stopped = [name for name in owner.connections if name in connections.stopped]
    for name in stopped:
        owner.connections[name].stop("reload")
    for name in stopped:
        with anyio.move_on_after(owner.connections[name].stop_timeout):
            await owner.connections[name].wait_stopped()
    previous = {name: owner.remove_connection(name) for name in stopped}
    for name, conn in built.items():
        if name in previous:  # same name: seq, counters and subscriptions go on
            conn.continue_from(previous[name])
        await owner.add_connection(conn)
    deadline = time.monotonic() + new.daemon.shutdown_timeout
    for name in [n for n in owner.sources if n in sources.stopped]:
        source = owner.remove_source(name)
        source.stop_reading()
        await source.wait_stopped()
        # Let what it delivered settle first, so close() acknowledges it and the
        # replacement does not read it again.
        while source.ctx.in_flight > 0 and time.monotonic() < deadline:
            await anyio.sleep(0.01)
        await source.close()
    for source in new_sources.values():
        await owner.add_source(source)
    # 4. retired handlers drain what they hold; the rest is dead-lettered. Meanwhile
    # and afterwards their counts stay in the API's figures for names still configured.
    deadline = time.monotonic() + new.daemon.shutdown_timeout
    await drain_all(retired, deadline, "removed")
    for runner in retired:
        await runner.stop_workers("removed")
        # Its final account, as at shutdown: the operator can reconcile every message.
        log_handler_totals(runner)
        owner.retired_runner(runner)
    log.info(
        "reload_applied",
        connections_kept=sorted(connections.kept),
        connections_restarted=sorted(n for n in built if n in previous),
        connections_started=sorted(n for n in built if n not in previous),
        connections_stopped=sorted(n for n in stopped if n not in new.connections),
        handlers_kept=sorted(handlers.kept),
        handlers_started=sorted(handlers.started),
        handlers_stopped=sorted(r.name for r in retired),
        sources_kept=sorted(sources.kept),
        routes=len(new.routes),
    )
    return []


def _short_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."
