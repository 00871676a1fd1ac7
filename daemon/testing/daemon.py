"""The daemon in-process for an end-to-end test, and the ``wsroute_daemon`` pytest fixture.

Invariant: a daemon started here always comes down through the ordered
shutdown (as on SIGTERM) when its ``async with`` is left, however the body
exits, and its upstream and temporary folder are released after it; the
config goes through the daemon's own loading, so it is the real one.
``wsroute.service`` and ``wsroute.config`` are imported only when a daemon
runs, so ``import wsroute.testing`` stays light.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio

from .upstream import Upstream
from .waiting import wait_until

H = TypeVar("H")  # a handler plugin's class

try:
    import pytest
except ImportError:  # the kit works without pytest; only the fixture needs it
    pytest = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from ..service import Service


class Daemon:
    """A daemon running in-process for a test; see :func:`run_daemon`."""

    def __init__(self, service: Service, upstream: Any, url: str, tmp_path: Path) -> None:
        self.service = service
        self.upstream = upstream
        self.url = url
        self.tmp_path = tmp_path

    @overload
    def handler(self, name: str) -> Any: ...

    @overload
    def handler(self, name: str, kind: type[H]) -> H: ...

    def handler(self, name: str, kind: type[Any] | None = None) -> Any:
        """The plugin instance of ``[handlers.NAME]``; with ``kind`` (its class, a
        :class:`Recorder` say), typed as one, and ``TypeError`` if it is not."""
        instance = self.service.runners[name].instance
        if kind is not None and not isinstance(instance, kind):
            raise TypeError(f"handler {name} is a {type(instance).__name__}, not a {kind.__name__}")
        return instance

    def stats(self, name: str) -> dict[str, int]:
        """The delivery counters of ``[handlers.NAME]``: received, handled, dead_lettered..."""
        return self.service.runners[name].snapshot()

    async def wait_until(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Poll ``predicate()`` until true; ``TimeoutError`` after ``timeout`` seconds."""
        await wait_until(predicate, timeout)

    def shutdown(self) -> None:
        """Start the ordered shutdown now (leaving the ``async with`` waits for it)."""
        self.service.shutdown()


@contextlib.asynccontextmanager
async def run_daemon(
    config: str,
    *,
    upstream: Upstream | None = None,
    environ: Mapping[str, str] | None = None,
    tmp_path: str | os.PathLike[str] | None = None,
) -> AsyncIterator[Daemon]:
    """Run ``upstream`` (if any) and the daemon on the TOML ``config``; drain both on exit.

    In ``config``, ``${WSROUTE_UPSTREAM}`` is the upstream's URL and
    ``${WSROUTE_TMP}`` a temporary folder (``tmp_path``, or one made and removed
    here); ``environ`` adds variables to the process environment for ``${...}``.
    Leaving the block shuts the daemon down as SIGTERM would: connections close,
    queues drain within ``shutdown_timeout``. An invalid config raises
    :class:`~wsroute.ConfigError`; a plugin that cannot load,
    :class:`~wsroute.PluginError`.
    """
    from ..config import loads
    from ..service import Service, plan

    async with contextlib.AsyncExitStack() as stack:
        if tmp_path is None:
            tmp_path = stack.enter_context(tempfile.TemporaryDirectory(prefix="wsroute-test-"))
        url = "" if upstream is None else await stack.enter_async_context(upstream.serve())
        variables = dict(os.environ, WSROUTE_UPSTREAM=url, WSROUTE_TMP=os.fspath(tmp_path))
        variables.update(environ or {})
        service = Service(plan(loads(config, path="test.toml", environ=variables)))
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            try:
                yield Daemon(service, upstream, url, Path(tmp_path))
            finally:
                service.shutdown()


if pytest is not None:

    @pytest.fixture
    def wsroute_daemon(
        tmp_path: Path,
    ) -> Callable[..., contextlib.AbstractAsyncContextManager[Daemon]]:
        """``async with wsroute_daemon(config, upstream=...) as daemon:`` — see :func:`run_daemon`.

        The daemon's ``${WSROUTE_TMP}`` is the test's ``tmp_path``.
        """

        def start(
            config: str,
            *,
            upstream: Upstream | None = None,
            environ: Mapping[str, str] | None = None,
        ) -> contextlib.AbstractAsyncContextManager[Daemon]:
            return run_daemon(config, upstream=upstream, environ=environ, tmp_path=tmp_path)

        return start
