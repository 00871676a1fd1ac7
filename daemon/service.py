"""The daemon: builds everything from a config, runs it, reloads it, shuts it down in order.

Phases, each in a module of its own:

1. :func:`~wsroute.plan.plan` — resolve and import every codec, handler and
   source plugin and validate their options (all problems at once, with key
   paths); ``wsroute check`` stops here;
2. :class:`Service` — start handler runners (``start()`` of each plugin, the
   dead-letter handlers first), the router, then the connections (spread out
   by a small jitter) and sources; report ready; serve;
3. :func:`~wsroute.reload.apply` on SIGHUP — all or nothing;
4. :func:`~wsroute.shutdown.stop_all` on SIGTERM — stop reading, close
   upstreams, drain within ``shutdown_timeout``, dead-letter what is left, log
   the delivery totals.

Invariants: reloads run one at a time (SIGHUPs are coalesced) and never once
a stop began; a stop waits for a running reload, never for queued ones.
"""

from __future__ import annotations

import asyncio
import gc
import random
import signal
import time
from collections.abc import Callable

import anyio
import anyio.abc
import structlog

from .api import ApiServer
from .budget import MemoryBudget
from .config import Config
from .connection import Connection, ConnectionState
from .contexts import DaemonHandlerContext, DaemonSourceContext
from .dispatch import Dispatcher
from .exceptions import ConfigError, ConfigIssue, PluginError, SendError
from .handler import HandlerRunner, HandlerStats
from .notify import Notifier, watchdog_loop
from .plan import HandlerPlan, Plan, SourcePlan, plan
from .registry import create_handler, create_source
from .reload import apply, dead_letter_targets
from .router import Router
from .shutdown import stop_all
from .sources import SourceSupervisor

__all__ = ["HandlerPlan", "Plan", "Service", "SourcePlan", "plan"]

log = structlog.get_logger("wsroute.service")

_STATUS_EVERY = 5.0


class Service:
    """The running daemon. ``await Service(plan).run()`` returns after a clean shutdown."""

    def __init__(
        self,
        plan: Plan,
        *,
        notifier: Notifier | None = None,
        reload: Callable[[], Plan] | None = None,
        connect: bool = True,
    ) -> None:
        self.plan = plan
        self.config = plan.config
        self.notifier = notifier or Notifier.from_environ(unset=False)
        self._reload = reload
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
        self.task_group: anyio.abc.TaskGroup | None = None
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
        self._status = ""
        self.stopped_cleanly = False

    # -- lookups used by contexts -------------------------------------------

    def connection(self, name: str) -> Connection:
        try:
            return self.connections[name]
        except KeyError:
            raise SendError(f"unknown connection {name!r}") from None

    # -- building ------------------------------------------------------------

    def build_runner(self, plan: Plan, name: str) -> HandlerRunner:
        hp = plan.handlers[name]
        instance = create_handler(hp.info, hp.options, DaemonHandlerContext(name, self))
        return HandlerRunner(
            name, hp.section, instance, plugin=hp.section.plugin, budget=self.budget
        )

    def wire_dead_letters(self, config: Config) -> None:
        """Point each runner at its dead-letter runner (again, after a reload)."""
        for name, target in dead_letter_targets(config, self.runners).items():
            self.runners[name].dead_letter = target
        self.dispatcher.dead_letter = self.runners.get(config.daemon.dead_letter or "")

    def build_router(self, config: Config) -> Router[HandlerRunner]:
        rules = [
            (name, route.connection, route.keys, [self.runners[h] for h in route.handlers])
            for name, route in config.routes.items()
        ]
        unmatched = self.runners.get(config.daemon.unmatched or "")
        return Router.compile(rules, unmatched)

    def build_connection(self, plan: Plan, name: str, spread: float = 0.0) -> Connection:
        return Connection(
            name,
            plan.config.connections[name],
            plan.codecs[name],
            self.dispatcher.dispatch,
            decode_failed=self.dispatcher.decode_failed,
            lifecycle=self.dispatcher.dispatch_lifecycle,
            start_delay=random.uniform(0, spread) if spread > 0 else 0.0,
        )

    def build_source(self, plan: Plan, name: str) -> SourceSupervisor:
        sp = plan.sources[name]
        ctx = DaemonSourceContext(name, self, plan.codecs[name])
        return SourceSupervisor(name, create_source(sp.info, sp.options, ctx), ctx)

    async def start_source(self, plan: Plan, name: str) -> None:
        running = self.sources[name] = self.build_source(plan, name)
        assert self.task_group is not None
        await self.task_group.start(running.run)

    # -- running -------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start everything, report ready, serve until SIGTERM/SIGINT (or :meth:`shutdown`)."""
        self.runners = {name: self.build_runner(self.plan, name) for name in self.plan.handlers}
        self.dispatcher = Dispatcher(self.build_router(self.config), budget=self.budget)
        self.wire_dead_letters(self.config)
        async with anyio.create_task_group() as tg:
            self.task_group = tg
            # Dead-letter handlers first, so everything else can dead-letter from the start.
            for runner in sorted(self.runners.values(), key=lambda r: r.dead_letter is not None):
                await tg.start(runner.run)
            if self.connect_upstreams:
                # Spread the first connects out, so a restart does not stampede upstreams.
                spread = min(1.0, 0.05 * len(self.config.connections))
                spread = spread if spread > 0.05 else 0.0
                for name in self.config.connections:
                    conn = self.build_connection(self.plan, name, spread)
                    self.connections[name] = conn
                    await tg.start(conn.run)
                for name in self.plan.sources:
                    await self.start_source(self.plan, name)
            try:
                await self.api.start(self.config.daemon.api)
            except ConfigError:  # an address that cannot be opened: exit 78, cleanly
                await stop_all(self)
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
                await stop_all(self)
                await self.api.stop()  # after the drain: /metrics shows it to the end
            tg.cancel_scope.cancel()
        self.stopped_cleanly = True

    def shutdown(self) -> None:
        """Begin the ordered shutdown (what SIGTERM does). Reloads are ignored from now on."""
        self._stopping = True
        self._shutdown.set()

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
        except (ConfigError, PluginError) as exc:
            issues = exc.issues if isinstance(exc, ConfigError) else [ConfigIssue("", str(exc))]
            self._reload_rejected([str(issue) for issue in issues])
            return False
        old_daemon = self.config.daemon
        problems = await apply(self, new_plan)
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

    @property
    def reload_failed(self) -> bool:
        """The last reload failed: the running config is older than the file."""
        return self._reload_failed

    async def _status_loop(self) -> None:
        while True:
            self.notifier.status(self.status_line())
            await anyio.sleep(_STATUS_EVERY)

    def status_line(self) -> str:
        """One line for systemd's STATUS=: connection states and delivery counters."""
        states: dict[str, int] = {}
        for conn in self.connections.values():
            states[conn.state.value] = states.get(conn.state.value, 0) + 1
        up = states.get(ConnectionState.CONNECTED.value, 0)
        frames = sum(c.seq for c in self.connections.values())
        handled = sum(r.stats.handled for r in self.runners.values())
        # Undecodable frames are dead-lettered by the dispatcher, not by a handler.
        dead = sum(r.stats.dead_lettered for r in self.runners.values())
        dead += sum(self.dispatcher.decode_errors.values())
        dropped = sum(r.stats.dropped for r in self.runners.values())
        queued = sum(r.queued for r in self.runners.values())
        return ("reload failed; " if self._reload_failed else "") + (
            f"{up}/{len(self.connections)} connected; frames={frames} handled={handled} "
            f"dead_lettered={dead} dropped={dropped} queued={queued}"
        )

    # -- shutdown ------------------------------------------------------------


def _event_loop() -> str:
    """The event loop this process runs on: ``uvloop`` or ``asyncio``."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
