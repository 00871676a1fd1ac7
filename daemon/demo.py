"""``wsroute demo``: an embedded upstream speaking the reference protocol, plus the daemon.

The reference protocol (used by the demo and the tests): the client logs in with a JSON text frame
``{"role": ..., "user_id": ...}``, then sends binary commands — a little-endian
``int32`` opcode followed by a UTF-8 JSON body (opcode 2 subscribes to
services; ``struct.pack("<ib", 0, 0)`` releases them, sent once before the
client closes). The server answers commands with the command's opcode, a JSON
text ``{"op": "ping"}`` (the client's heartbeat) with ``{"type": "pong"}``,
then streams binary opcode-1 ticks and JSON text ``news`` frames.

:class:`ReferenceUpstream` is also the real server the test suite runs against.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shlex
import struct
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import structlog
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["ReferenceUpstream", "run_demo"]

log = structlog.get_logger("wsroute.demo")

OPCODE_RELEASE = 0
OPCODE_TICK = 1
OPCODE_SUBSCRIBE = 2
_HEADER = struct.Struct("<i")


@dataclass
class ReferenceUpstream:
    """A real WebSocket server on 127.0.0.1 speaking the reference protocol.

    ``drop_first_after``: abort the first connection after that many seconds
    (no close frame), so the client's reconnect and replayed login show.
    ``tick_interval``: seconds between ticks (0: only answer commands).
    ``malformed_once``: send one binary frame shorter than its header.
    ``commands`` lists every binary command received, ``(opcode, body)``, the
    releases included (logged as ``demo_upstream_release_received``);
    ``pings`` counts the heartbeats answered.
    """

    tick_interval: float = 0.2
    news_every: int = 5
    drop_first_after: float | None = None
    malformed_once: bool = False
    connections: int = 0
    logins: list[dict[str, Any]] = field(default_factory=list)
    commands: list[tuple[int, Any]] = field(default_factory=list)
    pings: int = 0
    url: str = ""

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Run the server; yields its ``ws://127.0.0.1:PORT/`` URL."""
        async with serve(self._handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}/"
            yield self.url

    async def _handler(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._session(ws)

    async def _session(self, ws: ServerConnection) -> None:
        self.connections += 1
        number = self.connections
        first = await ws.recv()
        login = _parse_login(first)
        if login is None:
            await ws.close(1008, "login required")
            return
        self.logins.append(login)
        await ws.send(json.dumps({"type": "welcome", "user_id": login.get("user_id")}))
        async with anyio.create_task_group() as tg:
            subscribed = anyio.Event()
            tg.start_soon(self._commands, ws, subscribed, tg.cancel_scope, number)
            if number == 1 and self.drop_first_after is not None:
                tg.start_soon(self._drop_later, ws, self.drop_first_after)
            await subscribed.wait()
            if self.tick_interval > 0:
                with contextlib.suppress(ConnectionClosed):
                    await self._stream(ws, number)
            else:
                await ws.wait_closed()
            tg.cancel_scope.cancel()

    async def _commands(
        self, ws: ServerConnection, subscribed: anyio.Event, scope: anyio.CancelScope, number: int
    ) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._read_commands(ws, subscribed, number)
        scope.cancel()  # the peer is gone: end the session

    async def _read_commands(
        self, ws: ServerConnection, subscribed: anyio.Event, number: int
    ) -> None:
        async for data in ws:
            if isinstance(data, str):
                if _is_ping(data):
                    self.pings += 1
                    await ws.send(json.dumps({"type": "pong"}))
                continue
            if len(data) < _HEADER.size:
                continue
            (opcode,) = _HEADER.unpack_from(data)
            rest = data[_HEADER.size :]
            body: Any = None
            if opcode == OPCODE_SUBSCRIBE:
                body = json.loads(rest) if rest else None
            self.commands.append((opcode, body))
            if opcode == OPCODE_RELEASE:
                log.info("demo_upstream_release_received", connection=number, frame=data.hex())
            if opcode == OPCODE_SUBSCRIBE:
                await ws.send(
                    _HEADER.pack(OPCODE_SUBSCRIBE) + json.dumps({"subscribed": body}).encode()
                )
                subscribed.set()

    async def _drop_later(self, ws: ServerConnection, after: float) -> None:
        await anyio.sleep(after)
        log.info("demo_upstream_drops_connection")
        if ws.transport is not None:
            ws.transport.abort()

    async def _stream(self, ws: ServerConnection, number: int) -> None:
        price = 100.0
        for n in itertools.count(1):
            price = round(price + (0.25 if n % 3 else -0.5), 2)
            tick = {"service": "first", "n": n, "price": price, "connection": number}
            await ws.send(_HEADER.pack(OPCODE_TICK) + json.dumps(tick).encode())
            if self.news_every and n % self.news_every == 0:
                await ws.send(json.dumps({"type": "news", "headline": f"update {n}"}))
            if self.malformed_once and n == 2:
                self.malformed_once = False
                await ws.send(b"\x01\x00")  # shorter than the 4-byte header: dead-lettered
            await anyio.sleep(self.tick_interval)


def _is_ping(data: str) -> bool:
    try:
        value = json.loads(data)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("op") == "ping"


def _parse_login(data: str | bytes) -> dict[str, Any] | None:
    if not isinstance(data, str):
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    if isinstance(value, dict) and "role" in value and "user_id" in value:
        return value
    return None


def demo_config_text() -> str:
    """The built-in demo config (``config/demo.toml`` in the repository)."""
    return resources.files("wsroute").joinpath("demo.toml").read_text(encoding="utf-8")


def _toml_string(value: str) -> str:
    """``value`` escaped for the inside of a TOML basic string (``"..."``)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _kept_config(text: str, url: str, folder: str) -> str:
    """The demo config with ``${WSROUTE_DEMO_URL}`` and ``${WSROUTE_DEMO_DIR}`` filled in.

    Written next to the dead letters, so ``wsroute replay -c`` loads it with no
    environment (replay connects no upstream: the URL need not answer).
    """
    head = (
        "# Written by `wsroute demo`: its config with WSROUTE_DEMO_URL and WSROUTE_DEMO_DIR\n"
        "# filled in, for `wsroute replay` on the dead letters kept in this folder.\n\n"
    )
    return head + text.replace("${WSROUTE_DEMO_URL}", _toml_string(url)).replace(
        "${WSROUTE_DEMO_DIR}", _toml_string(folder)
    )


def replay_command(config: str, dead_letters: str) -> str:
    """The shell command that replays the demo's dead letters."""
    return shlex.join(["wsroute", "replay", "-c", config, dead_letters])


def run_demo(duration: float = 0.0, config_path: str | None = None) -> int:
    """Run the upstream and the daemon until Ctrl-C (or ``duration`` seconds).

    The demo's files are kept after it exits, in a new ``wsroute-demo-*`` folder
    in the temporary directory: the dead letters (``dead-letter.jsonl``) and the
    config they were written with (``demo.toml``, its ``${...}`` filled in). The
    last lines on stdout name them and the ``wsroute replay`` command to try.
    """
    from .config import loads
    from .exceptions import ConfigError
    from .logging import configure
    from .service import Service, plan

    configure("info", "console")
    logging.getLogger("websockets.server").setLevel(logging.WARNING)
    if config_path is None:
        text = demo_config_text()
    else:
        try:
            text = Path(config_path).read_text(encoding="utf-8")
        except OSError as exc:  # one line and exit 78, as for any config
            raise ConfigError(f"cannot read it: {exc.strerror or exc}") from exc
    folder = tempfile.mkdtemp(prefix="wsroute-demo-")
    kept_config = os.path.join(folder, "demo.toml")
    dead_letters = os.path.join(folder, "dead-letter.jsonl")

    async def main() -> None:
        upstream = ReferenceUpstream(drop_first_after=3.0, malformed_once=True)
        async with upstream.serve() as url:
            environ = dict(os.environ, WSROUTE_DEMO_URL=url, WSROUTE_DEMO_DIR=folder)
            config = loads(text, path=config_path or "demo.toml", environ=environ)
            await anyio.Path(kept_config).write_text(
                _kept_config(text, url, folder), encoding="utf-8"
            )
            service = Service(plan(config))
            log.info("demo_started", upstream=url, kept_in=folder, dead_letters=dead_letters)
            async with anyio.create_task_group() as tg:
                await tg.start(service.run)
                if duration > 0:
                    await anyio.sleep(duration)
                    service.shutdown()

    try:
        anyio.run(main, backend="asyncio")
    finally:
        _print_kept(folder, kept_config, dead_letters)
    return 0


def _print_kept(folder: str, config: str, dead_letters: str) -> None:
    """Where the demo's files are, and how to replay its dead letters."""
    if not os.path.exists(config):
        with contextlib.suppress(OSError):  # the demo stopped before writing anything
            os.rmdir(folder)
        return
    print(f"\nThe demo's files are kept in {folder}:", flush=True)
    print(f"  {config}  the demo config, with the upstream URL and this folder filled in")
    if not os.path.exists(dead_letters):
        print("  (no dead letters were written this time)", flush=True)
        return
    print(f"  {dead_letters}  the dead letters (the malformed frame)")
    print("Replay the dead letters through the same config:")
    print(f"  {replay_command(config, dead_letters)}")
    print(
        "The frame is still malformed, so replay dead-letters it again (appended to the same\n"
        "file) and exits 1; it exits 0 when every record is handled.",
        flush=True,
    )
