"""The running daemon's one owner: builds everything from a plan, runs, reloads, stops.

Phases:

1. :func:`~wsroute.plan.plan` — resolve and import every codec, handler and
   source plugin and validate their options (all problems at once, with key
   paths); ``wsroute check`` stops here, after the preflight;
2. :meth:`Service.run` — the preflight (:func:`~wsroute.preflight.checked`,
   what ``check`` runs: ``check`` = ``run``), then handler runners (``start()``
   of each plugin, the dead-letter handlers first), the router, the connections
   (spread out by a small jitter) and sources; report ready; serve;
3. on SIGHUP, :meth:`Service.reload` — the preflight again, then the pure
   :func:`~wsroute.reload_plan.reload_plan` (config A → config B) applied by
   :func:`~wsroute.reload.apply` through the owner's :class:`~wsroute.reload.Reloadable`
   operations, all or nothing;
4. on SIGTERM, the ordered stop (:func:`~wsroute.shutdown.stop_all`) — stop
   reading, close upstreams, drain within ``shutdown_timeout``, dead-letter
   what is left, log the delivery totals.

Only the Service changes its running state (runners, connections, sources, the
router, the retired counts). Plugins reach it through their contexts
(:mod:`wsroute.contexts`); observers (the API, ``/status``, ``/metrics``, the
tap, STATUS=) through the read-only :class:`~wsroute.view.DaemonView`; only
the entry points that build a daemon import this module.

Invariants: reloads run one at a time (SIGHUPs are coalesced) and never once
a stop began; a stop waits for a running reload, never for queued ones.
"""

from __future__ import annotations

import asyncio
import gc
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import structlog

from .api import ApiServer
from .budget import MemoryBudget
from .config import ApiSection, Config
from .connection import Connection
from .contexts import DaemonHandlerContext, DaemonSourceContext
from .dispatch import Dispatcher
from .exceptions import ConfigError, ConfigIssue, PluginError, SendError
from .handler import HandlerRunner, HandlerStats
from .notify import Notifier, watchdog_loop
from .plan import HandlerPlan, Plan, SourcePlan, plan
from .preflight import checked
from .registry import create_handler, create_source
from .reload import apply
from .reload_plan import reload_plan
from .router import Router
from .shutdown import stop_all
from .snapshot import add_stats, status_line
from .sources import SourceSupervisor
from .view import TapHook
from .wiring import dead_letter_targets, route_table

__all__ = ["HandlerPlan", "Plan", "Service", "SourcePlan", "plan"]

log = structlog.get_logger("wsroute.service")

_STATUS_EVERY = 5.0


class Service:
    """The running daemon. ``await Service(plan).run()`` returns after a clean shutdown.

    ``preflight=False`` skips the start-time preconditions (``wsroute replay``,
    which opens no connection, keeps its own).
    """

    def __init__(
        self,
        plan: Plan,
        *,
        notifier: Notifier | None = None,
        reload: Callable[[], Plan] | None = None,
        connect: bool = True,
        preflight: bool = True,
    ) -> None:
        self.plan = plan
        self.config = plan.config
        self.notifier = notifier or Notifier.from_environ(unset=False)
        self._reload = reload
        self._preflight = preflight
        self.connect_upstreams = connect
        self.runners: dict[str, HandlerRunner] = {}
        self.connections: dict[str, Connection] = {}
        self.sources: dict[str, SourceSupervisor] = {}
        #: [daemon] memory_budget, shared by every runner and the dispatcher.
        self.budget = MemoryBudget(self.config.daemon.memory_budget)
        self.dispatcher = Dispatcher(Router([]), budget=self.budget)
        self._shutdown = anyio.Event()
        self._stopping = False  # set by shutdown(): reloads are ignored from then on
        # SIGHUPs are coalesced: a reload asked for while one runs is done once after it.
        self._reload_wanted = anyio.Event()
        self._reload_lock = anyio.Lock()  # held by a running reload; shutdown waits for it
        self._task_group: anyio.abc.TaskGroup | None = None
        self._reload_failed = False  # shown in STATUS= until a reload succeeds
        #: Reloads by result, for the API: "success", "failure".
        self.reloads = {"success": 0, "failure": 0}
        #: When the daemon started and when its running config was loaded (Unix time).
        self.started_at = time.time()
        self.config_loaded_at = self.started_at
        #: Handlers a reload replaced or removed that still drain (their counts go on
        #: in the API's figures), and the final counts of those that finished, by
        #: name, for names the running config still has: counters stay monotonic.
        self.retiring: list[HandlerRunner] = []
        self.retired: dict[str, HandlerStats] = {}
        #: [daemon.api]: its listeners, opened by run() once everything is up.
        self.api = ApiServer(self)
        self.stopped_cleanly = False

    # -- the read-only view (wsroute.view.DaemonView) ------------------------

    @property
    def unmatched(self) -> Counter[str]:
        return self.dispatcher.unmatched

    @property
    def decode_errors(self) -> Counter[str]:
        return self.dispatcher.decode_errors

    @property
    def reload_failed(self) -> bool:
        """The last reload failed: the running config is older than the file."""
        return self._reload_failed

    def set_tap(self, hook: TapHook | None) -> None:
        # Routed messages are tapped where they are routed; dead letters where a
        # runner takes them (they are never routed).
        self.dispatcher.tap = hook
        for runner in self.runners.values():
            runner.tap = hook

    def status_line(self) -> str:
        """One line for systemd's STATUS=: connection states and delivery counters."""
        return status_line(self)

    # -- what the contexts look up at call time ------------------------------

    def connection(self, name: str) -> Connection:
        try:
            return self.connections[name]
        except KeyError:
            raise SendError(f"unknown connection {name!r}") from None

    def dead_letter_runner(self, source: str) -> HandlerRunner | None:
        """Where source ``source``'s dead letters go under the running config."""
        section = self.config.sources[source]
        return self.runners.get(section.dead_letter or self.config.daemon.dead_letter or "")

    # -- building (wsroute.reload.Reloadable) --------------------------------

    def build_runner(self, plan: Plan, name: str) -> HandlerRunner:
        hp = plan.handlers[name]
        instance = create_handler(hp.info, hp.options, DaemonHandlerContext(name, self))
        return HandlerRunner(
            name, hp.section, instance, plugin=hp.section.plugin, budget=self.budget
        )

    def build_connection(self, plan: Plan, name: str, spread: float = 0.0) -> Connection:
        return Connection(
            name,
            plan.config.connections[name],
            plan.codecs[name],
            self.dispatcher.dispatch,
            dispatch_many=self.dispatcher.dispatch_many,
            decode_failed=self.dispatcher.decode_failed,
            lifecycle=self.dispatcher.dispatch_lifecycle,
            start_delay=random.uniform(0, spread) if spread > 0 else 0.0,
        )

    def build_source(self, plan: Plan, name: str) -> SourceSupervisor:
        sp = plan.sources[name]
        ctx = DaemonSourceContext(name, self, plan.codecs[name])
        return SourceSupervisor(name, create_source(sp.info, sp.options, ctx), ctx)

    def _wire_dead_letters(self, config: Config) -> None:
        """Point each runner at its dead-letter runner (again, after a reload)."""
        for name, target in dead_letter_targets(config, self.runners).items():
            self.runners[name].dead_letter = target
        self.dispatcher.dead_letter = self.runners.get(config.daemon.dead_letter or "")

    # -- changing what runs (wsroute.reload.Reloadable) ----------------------

    async def _start(self, run: Callable[..., Coroutine[Any, Any, Any]]) -> None:
        assert self._task_group is not None, "only while run() runs"
        await self._task_group.start(run)

    async def start_runner(self, runner: HandlerRunner) -> None:
        await self._start(runner.run)

    async def prepare_api(self, section: ApiSection) -> list[str]:
        return await self.api.prepare(section)

    async def commit(self, plan: Plan, runners: dict[str, HandlerRunner]) -> list[HandlerRunner]:
        """Switch to ``plan`` with ``runners`` (started); return the runners it retires.

        One assignment each for the runner table and the router: every connection
        and source routes by the new config from its next message on.
        """
        retired = [r for name, r in self.runners.items() if runners.get(name) is not r]
        self.runners = runners
        self.set_tap(self.dispatcher.tap)  # new runners show their dead letters to taps too
        self._wire_dead_letters(plan.config)
        self.dispatcher.router = route_table(plan.config, self.runners)
        self.budget.set_limit(plan.config.daemon.memory_budget)
        self.plan, self.config = plan, plan.config
        await self.api.commit()
        self.retiring.extend(retired)
        return retired

    def remove_connection(self, name: str) -> Connection:
        return self.connections.pop(name)

    async def add_connection(self, conn: Connection) -> None:
        self.connections[conn.name] = conn
        await self._start(conn.run)

    def remove_source(self, name: str) -> SourceSupervisor:
        return self.sources.pop(name)

    async def add_source(self, source: SourceSupervisor) -> None:
        self.sources[source.name] = source
        await self._start(source.run)

    def retired_runner(self, runner: HandlerRunner) -> None:
        """A retired runner finished draining: its counts stay, under a configured name."""
        self.retiring.remove(runner)
        if runner.name in self.config.handlers:
            self.retired[runner.name] = add_stats(self.retired.get(runner.name), runner.stats)
        for name in [n for n in self.retired if n not in self.config.handlers]:
            del self.retired[name]

    # -- running -------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start everything, report ready, serve until SIGTERM/SIGINT (or :meth:`shutdown`)."""
        if self._preflight:
            self._check(self.plan)  # ConfigError: nothing started
        self.runners = {name: self.build_runner(self.plan, name) for name in self.plan.handlers}
        self.dispatcher = Dispatcher(route_table(self.config, self.runners), budget=self.budget)
        self._wire_dead_letters(self.config)
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            # Dead-letter handlers first, so everything else can dead-letter from the start.
            for runner in sorted(self.runners.values(), key=lambda r: r.dead_letter is not None):
                await tg.start(runner.run)
            if self.connect_upstreams:
                # Spread the first connects out, so a restart does not stampede upstreams.
                spread = min(1.0, 0.05 * len(self.config.connections))
                spread = spread if spread > 0.05 else 0.0
                for name in self.config.connections:
                    await self.add_connection(self.build_connection(self.plan, name, spread))
                for name in self.plan.sources:
                    await self.add_source(self.build_source(self.plan, name))
            try:
                await self.api.start(self.config.daemon.api)
            except ConfigError:  # an address that cannot be opened: exit 78, cleanly
                await self._stop()
                raise
            # Started, not just scheduled: the handlers are installed before READY=1 goes
            # out, so a stop that follows at once is a clean shutdown, not the default
            # action of SIGTERM (the process killed, nothing drained).
            await tg.start(self._signals)
            tg.start_soon(self._reload_loop)
            tg.start_soon(watchdog_loop, self.notifier)
            tg.start_soon(self._status_loop)
            log.info(
                "started",
                connections=len(self.connections),
                handlers=len(self.runners),
                routes=len(self.config.routes),
                config=self.config.path,
                event_loop=_event_loop(),
            )
            # Everything built so far lives until shutdown: keep the cyclic GC from
            # rescanning it (measured: 30-40% less CPU per 4 KiB frame).
            gc.freeze()
            self.notifier.ready(status=self.status_line())
            task_status.started()
            await self._shutdown.wait()
            # A reload that is running finishes first (it is never left half-applied);
            # reloads asked for but not begun are dropped.
            async with self._reload_lock:
                await self._stop()
                await self.api.stop()  # after the drain: /metrics shows it to the end
            tg.cancel_scope.cancel()
        self.stopped_cleanly = True

    def shutdown(self) -> None:
        """Begin the ordered shutdown (what SIGTERM does). Reloads are ignored from now on."""
        self._stopping = True
        self._shutdown.set()

    async def _stop(self) -> None:
        await stop_all(
            runners=self.runners,
            connections=self.connections,
            sources=self.sources,
            dispatcher=self.dispatcher,
            notifier=self.notifier,
            timeout=self.config.daemon.shutdown_timeout,
        )

    def _check(self, plan: Plan) -> None:
        """The preflight ``wsroute check`` runs: ConfigError on an error; warnings logged."""
        for warning in checked(plan):
            structlog.get_logger("wsroute").warning("config_warning", problem=str(warning))

    def request_reload(self) -> None:
        """Ask for a reload (what SIGHUP does): done by the reload task, never twice at once.

        Requests made while a reload runs are coalesced into one more reload; requests
        made once shutdown began are ignored, and a stop never waits behind them.
        """
        if self._stopping:
            log.info("reload_ignored", reason="shutting down")
            return
        self._reload_wanted.set()

    async def _signals(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.request_reload()
                else:
                    log.info("signal_received", signal=signal.Signals(signum).name)
                    self.shutdown()

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted = anyio.Event()
            await self.reload()

    async def reload(self) -> bool:
        """Load the config file again and apply it completely, or not at all.

        ``False`` when the new config is invalid or could not be started (every
        problem logged with its key path): the old config keeps running untouched
        and STATUS= says "reload failed" until a reload succeeds.
        """
        async with self._reload_lock:
            if self._stopping:
                log.info("reload_ignored", reason="shutting down")
                return False
            return await self._reload_now()

    async def _reload_now(self) -> bool:
        self.notifier.reloading()
        log.info("reload_started", config=self.config.path)
        if self._reload is None:
            log.warning("reload_unsupported")
            self.notifier.ready(status=self.status_line())
            return False
        try:
            new_plan = self._reload()
            if self._preflight:
                # A reload whose preconditions fail is rejected: the old config keeps running.
                self._check(new_plan)
        except (ConfigError, PluginError) as exc:
            issues = exc.issues if isinstance(exc, ConfigError) else [ConfigIssue("", str(exc))]
            self._reload_rejected([str(issue) for issue in issues])
            return False
        old_daemon = self.config.daemon
        changes = reload_plan(self.config, new_plan.config, upstreams=self.connect_upstreams)
        problems = await apply(self, new_plan, changes)
        if problems:
            self._reload_rejected(problems)
            return False
        new_daemon = new_plan.config.daemon
        if old_daemon.event_loop != new_daemon.event_loop:
            log.warning(
                "reload_needs_restart",
                key="daemon.event_loop",
                running=_event_loop(),
                configured=new_daemon.event_loop,
            )
        if (old_daemon.log_level, old_daemon.log_format) != (
            new_daemon.log_level,
            new_daemon.log_format,
        ):
            from .logging import configure

            configure(new_daemon.log_level, new_daemon.log_format)
        self._reload_failed = False
        self.reloads["success"] += 1
        self.config_loaded_at = time.time()
        self.notifier.ready(status=self.status_line())
        return True

    def _reload_rejected(self, problems: list[str]) -> None:
        for problem in problems:
            log.error("reload_invalid", error=problem)
        log.error("reload_failed", errors=len(problems), keeping="old config")
        self._reload_failed = True
        self.reloads["failure"] += 1
        self.notifier.ready(status=self.status_line())

    async def _status_loop(self) -> None:
        while True:
            self.notifier.status(self.status_line())
            await anyio.sleep(_STATUS_EVERY)


def _event_loop() -> str:
    """The event loop this process runs on: ``uvloop`` or ``asyncio``."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
