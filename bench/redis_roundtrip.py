"""Public ways to send many Redis commands at once: ``.venv/bin/python bench/redis_roundtrip.py``.

One client process against a private ``redis-server`` (loopback, no persistence):
rounds of ``--commands`` one-frame ``XADD``s (the ``redis`` sink's 16 arguments,
``pack = 1``), the client's CPU per command, median of ``--runs``. Compared, all
on public APIs:

- ``link``: :class:`wsroute.plugins.redis.roundtrip.Link`, hiredis packing and
  parsing on a connection wsroute owns (what the sink and the source use);
- ``pipeline``: redis-py's ``pipeline(transaction=False)`` and
  ``execute(raise_on_error=False)``;
- ``read_response``: a connection of redis-py's pool, the commands packed by
  hiredis in one ``send_packed_command``, one ``read_response`` per reply.

Nothing is saved; bench/README.md has the recorded figures.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from wsroute.plugins.redis.roundtrip import Link

XADD = (
    "XADD", "s", "MAXLEN", "~", "100000", "*",
    b"frame", b'\x00\x00\x00\x01{"type":"tick","n":12345,"p":1.5}',
    b"seq", b"123456", b"received_at", b"1700000000.123456",
    b"key", b"", b"connection", b"up",
)  # fmt: skip


async def pipeline(client: aioredis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return await pipe.execute(raise_on_error=False)


async def read_response(client: aioredis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    pool: Any = client.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command([hiredis.pack_command(c) for c in commands])
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    finally:
        await pool.release(connection)


async def measure(port: int, commands: int, rounds: int, runs: int) -> None:
    url = f"redis://127.0.0.1:{port}/0"
    client = aioredis.Redis.from_url(url, socket_timeout=5)
    link = Link(url, timeout=5.0)
    batch = [XADD] * commands
    ways: dict[str, Callable[[], Awaitable[list[Any]]]] = {
        "link": lambda: link.round_trip(batch),
        "pipeline": lambda: pipeline(client, batch),
        "read_response": lambda: read_response(client, batch),
    }
    figures: dict[str, list[float]] = {name: [] for name in ways}
    for name, way in ways.items():  # warm up, and check the replies
        replies = await way()
        assert len(replies) == commands, name
        assert all(isinstance(r, bytes) for r in replies), name
    for _ in range(runs):
        for name, way in ways.items():
            await client.delete("s")
            start = time.process_time()
            for _ in range(rounds):
                await way()
            figures[name].append((time.process_time() - start) / (rounds * commands) * 1e6)
    for name, runs_of in figures.items():
        median = statistics.median(runs_of)
        print(
            f"{name:14s} {median:6.2f} µs/command (runs: {', '.join(f'{x:.2f}' for x in runs_of)})"
        )
    await client.aclose()
    await link.aclose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commands", type=int, default=111, help="XADDs per round trip (111)")
    p.add_argument("--rounds", type=int, default=100, help="round trips per run (100)")
    p.add_argument("--runs", type=int, default=7, help="runs (7)")
    args = p.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
            cwd=folder,
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
            asyncio.run(measure(port, args.commands, args.rounds, args.runs))
        finally:
            server.terminate()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
