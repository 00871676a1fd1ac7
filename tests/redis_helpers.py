"""A real ``redis-server`` for the tests: loopback only, its own port and folder.

It runs with ``--appendonly yes --appendfsync everysec`` (what docs/scale-out.md
asks of production) and no RDB snapshots, so a restart on the same folder shows
exactly what the append-only file kept. :meth:`RedisServer.kill` is a crash
(SIGKILL), :meth:`RedisServer.stop` a clean stop (SIGTERM); :meth:`RedisServer.start`
again brings it back on the same port and folder.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest

from wsroute.testing import free_port

from conftest import need, tool_path

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["REDIS_SERVER", "RedisServer", "redis_server", "requires_redis"]


REDIS_SERVER = tool_path("redis-server")

# Skips without redis-server; fails under CI (tests/conftest.py: need).
requires_redis = need("redis-server")


class RedisServer:
    """One redis-server process on ``127.0.0.1:port`` keeping its files in ``folder``."""

    def __init__(self, folder: Path, port: int | None = None, *, persistent: bool = True) -> None:
        self.folder = folder
        self.port = port or free_port()
        # AOF everysec (what docs/scale-out.md asks of production), or nothing kept.
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start (or start again) and wait until it answers PING (the AOF is loaded)."""
        assert REDIS_SERVER is not None
        assert self.proc is None, "already running"
        self._log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - closed in _reap
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                *(
                    ("--appendonly", "yes", "--appendfsync", "everysec")
                    if self.persistent
                    else ("--appendonly", "no")
                ),
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING: {self.log()}")
            time.sleep(0.02)

    def ping(self) -> bool:
        """True when the server answers PING with PONG (not LOADING, not refused)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """A clean stop: SIGTERM (Redis flushes the AOF), then wait."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """A crash: SIGKILL. Writes of the last second may be missing from the AOF."""
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signum)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    """A started server, killed at the end whatever happened."""
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.kill()


# The fixtures of the Redis test modules (conftest.py loads this module as a plugin).


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, in its temporary folder."""
    with redis_server(tmp_path / "redis") as started:
        yield started


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A redis-py client of :func:`server`, closed after the test."""
    import redis.asyncio as aioredis  # the redis extra: only where a test asks for it

    conn = aioredis.Redis.from_url(server.url)
    try:
        yield conn
    finally:
        await conn.aclose()
