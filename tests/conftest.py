"""Shared fixtures: real servers on 127.0.0.1, a running daemon in-process."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import anyio
import pytest
import structlog

from wsroute.config import loads
from wsroute.service import Service, plan

# The atheris target is run by hand (tests/fuzz/README.md), not collected.
collect_ignore_glob = ["fuzz/*"]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


async def wait_until(predicate: object, timeout: float = 5.0, step: float = 0.01) -> None:
    """Poll ``predicate()`` until true; fail the test after ``timeout`` seconds."""
    assert callable(predicate)
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(step)
