"""Reload: a new config applied as a diff, completely or not at all.

:func:`apply` first builds and starts everything the new config needs next to
the running one — new and changed handler runners (their ``start()``), new
and changed connections (their TLS contexts), new and changed sources. If any
of that fails, what was started is stopped again and the problems are
returned: nothing of the running config was touched. Only then does it
commit: swap the runner table and the router (one assignment each), restart
changed connections and sources, and retire removed or changed handlers
(drained within ``shutdown_timeout``, the rest dead-lettered as ``removed``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import anyio
import structlog

from .config import Config, unchanged_connections, unchanged_sources
from .connection import Connection
from .exceptions import ConfigError, PluginError
from .handler import HandlerRunner, HandlerStats
from .plan import Plan
from .shutdown import drain_all, log_handler_totals
from .sources import SourceSupervisor

if TYPE_CHECKING:
    from .service import Service

__all__ = ["add_stats", "apply", "dead_letter_targets"]

log = structlog.get_logger("wsroute.service")


async def apply(service: Service, new_plan: Plan) -> list[str]:
    """Apply a new, valid config as a diff; unchanged connections keep their socket.

    All or nothing: first everything the new config needs is built and
    started next to the running config (new and changed handlers' ``start()``,
    TLS contexts of new and changed connections, source instances). If any of
    it fails, what was started is stopped again, nothing of the old config has
    been touched, and the problems are returned (one per key path). Only then
    is the old config retired.
    """
    old, new = service.config, new_plan.config
    tg = service.task_group
    assert tg is not None
    kept_handlers = {
        name
        for name, section in new.handlers.items()
        if name in service.runners and old.handlers.get(name) == section
    }
    started = [name for name in new.handlers if name not in kept_handlers]
    keep = unchanged_connections(old, new) if service.connect_upstreams else set()
    kept_sources = unchanged_sources(old, new) if service.connect_upstreams else set()
    # 1. prepare, next to the running config
    problems: list[str] = []
    fresh: dict[str, HandlerRunner] = {}
    for name in started:
        try:
            fresh[name] = service.build_runner(new_plan, name)
        except Exception as exc:
            problems.append(f"handlers.{name}: could not create: {exc}")
    built: dict[str, Connection] = {}
    new_sources: dict[str, SourceSupervisor] = {}
    if service.connect_upstreams:
        for name in new.connections:
            if name not in keep:
                try:
                    built[name] = service.build_connection(new_plan, name)
                except ConfigError as exc:  # a TLS file that cannot be loaded
                    problems.extend(str(issue) for issue in exc.issues)
                except Exception as exc:
                    problems.append(f"connections.{name}: {_short_error(exc)}")
        for name in new_plan.sources:
            if name not in kept_sources:
                try:
                    new_sources[name] = service.build_source(new_plan, name)
                except Exception as exc:
                    problems.append(f"sources.{name}: could not create: {exc}")
    if problems:
        return problems
    runners = {name: service.runners[name] for name in kept_handlers} | fresh
    targets = dead_letter_targets(new, runners)
    for name, runner in fresh.items():
        runner.dead_letter = targets[name]
    running: list[HandlerRunner] = []
    for name in sorted(fresh, key=lambda n: fresh[n].dead_letter is not None):
        try:
            await tg.start(fresh[name].run)
        except Exception as exc:  # start() failed: PluginError names the handler
            problems.append(str(exc) if isinstance(exc, PluginError) else repr(exc))
            break
        running.append(fresh[name])
    if problems:
        for runner in reversed(running):  # nothing was routed to them yet
            await runner.stop_workers("removed")
        return problems
    # the API's new listen addresses are opened next to the old ones
    api_problems = await service.api.prepare(new.daemon.api)
    if api_problems:
        for runner in reversed(running):  # nothing was routed to them yet
            await runner.stop_workers("removed")
        return api_problems
    # 2. commit: from here on nothing can fail for want of a resource
    retired = [r for name, r in service.runners.items() if name not in kept_handlers]
    service.runners = runners
    service.wire_dead_letters(new)
    # one assignment switches every source to the new route table
    service.dispatcher.router = service.build_router(new)
    service.budget.set_limit(new.daemon.memory_budget)
    service.plan, service.config = new_plan, new
    await service.api.commit()
    # 3. connections: keep the unchanged ones open, restart the changed ones
    stopped = [name for name in service.connections if name not in keep]
    for name in stopped:
        service.connections[name].stop("reload")
    for name in stopped:
        with anyio.move_on_after(service.connections[name].stop_timeout):
            await service.connections[name].wait_stopped()
    previous = {name: service.connections.pop(name) for name in stopped}
    begun = []
    for name, conn in built.items():
        if name in previous:  # same name: seq, counters and subscriptions go on
            conn.continue_from(previous[name])
        service.connections[name] = conn
        await tg.start(conn.run)
        begun.append(name)
    deadline = time.monotonic() + new.daemon.shutdown_timeout
    for name in [n for n in service.sources if n not in kept_sources]:
        source = service.sources.pop(name)
        source.stop_reading()
        await source.wait_stopped()
        # Let what it delivered settle first, so close() acknowledges it and the
        # replacement does not read it again.
        while source.ctx.in_flight > 0 and time.monotonic() < deadline:
            await anyio.sleep(0.01)
        await source.close()
    for name, source in new_sources.items():
        service.sources[name] = source
        await tg.start(source.run)
    # 4. retired handlers drain what they hold; the rest is dead-lettered. Meanwhile
    # and afterwards their counts stay in the API's figures for names still configured.
    service.retiring.extend(retired)
    deadline = time.monotonic() + new.daemon.shutdown_timeout
    await drain_all(retired, deadline, "removed")
    for runner in retired:
        await runner.stop_workers("removed")
        # Its final account, as at shutdown: the operator can reconcile every message.
        log_handler_totals(runner)
        service.retiring.remove(runner)
        if runner.name in new.handlers:
            service.retired[runner.name] = add_stats(service.retired.get(runner.name), runner.stats)
    for name in [n for n in service.retired if n not in new.handlers]:
        del service.retired[name]
    log.info(
        "reload_applied",
        connections_kept=sorted(keep),
        connections_restarted=sorted(n for n in begun if n in previous),
        connections_started=sorted(n for n in begun if n not in previous),
        connections_stopped=sorted(n for n in stopped if n not in new.connections),
        handlers_kept=sorted(kept_handlers),
        handlers_started=sorted(started),
        handlers_stopped=sorted(r.name for r in retired),
        sources_kept=sorted(kept_sources),
        routes=len(new.routes),
    )
    return []


def add_stats(total: HandlerStats | None, more: HandlerStats) -> HandlerStats:
    """``total`` plus ``more``, counter by counter (a new object)."""
    if total is None:
        return dataclasses.replace(more)
    return HandlerStats(
        **{f.name: getattr(total, f.name) + getattr(more, f.name) for f in dataclasses.fields(more)}
    )


def dead_letter_targets(
    config: Config, runners: dict[str, HandlerRunner]
) -> dict[str, HandlerRunner | None]:
    """Each runner's dead-letter runner under ``config``, without changing any runner."""
    default_dlq = config.daemon.dead_letter
    explicit = {h.dead_letter for h in config.handlers.values()}
    dlq_targets = (explicit | {default_dlq}) - {None}
    targets: dict[str, HandlerRunner | None] = {}
    for name, runner in runners.items():
        # A dead-letter handler takes no default dead letter of its own: its
        # failures are logged and counted as lost, never looped back.
        target = runner.section.dead_letter or (None if name in dlq_targets else default_dlq)
        targets[name] = runners[target] if target and target != name else None
    return targets


def _short_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."
