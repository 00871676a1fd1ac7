"""Secrets never reach the logs: not the values the config resolved, wherever they turn up.

The daemon runs as a real ``wsroute run`` subprocess against a hostile local
upstream that echoes the ``Authorization`` header back — in a refused
handshake's body and reason phrase, in a broken upgrade header (which the
WebSocket library quotes in its error), and in a close reason — with a token
read through ``${file:...}``, ``user:password@`` in the URL and secret query
parameters. Nothing of them may appear in the daemon's output; the query
parameter listed in ``log_query_keys`` does. Plus unit tests of the masking
processor and of what the loader registers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from wsroute import logging as wslogging
from wsroute.config import loads
from wsroute.logging import mask_secrets, redact_values, register_secrets

from conftest import tcp_server

pytestmark = pytest.mark.anyio

WSROUTE = str(Path(sys.executable).with_name("wsroute"))
TOKEN = "tok-9f8e7d6c5b4a3921"
USER, PASSWORD = "feed@user", "pa55-url-secret"
JWT, PWD, ACCESS = "jwt-aa11bb22cc33", "pwd-dd44ee55ff66", "access-77gg88hh99"
SECRETS = (
    TOKEN,
    PASSWORD,
    JWT,
    PWD,
    ACCESS,
    base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
)
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _accept(key: str) -> str:
    import hashlib

    return base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()


class Echoer:
    """An upstream that answers each connect differently, echoing the credentials back.

    1: ``401`` with the credentials (the Authorization value the URL's user info
    makes and the token header) in its reason phrase, a header and the body;
    2: a ``101`` whose ``Sec-WebSocket-Accept`` is those credentials (the
    library quotes the bad header in its error); 3 and on: a proper upgrade, then
    a close frame whose reason holds the token.
    """

    def __init__(self) -> None:
        self.connects = 0
        self.port = 0
        self.seen: list[str] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connects += 1
        number = self.connects
        try:
            async with asyncio.timeout(10):
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                headers = {}
                for line in head.split("\r\n")[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers.setdefault(name.strip().lower(), value.strip())
                # The URL's user info (Basic) and the token header, echoed together.
                auth = " ".join(
                    v for v in (headers.get("authorization"), headers.get("x-token")) if v
                )
                self.seen.append(auth)
                if number == 1:
                    body = f"bad credentials: {auth}".encode()
                    writer.write(
                        f"HTTP/1.1 401 Unauthorized {auth}\r\nX-Echo: {auth}\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                        + body
                    )
                    await writer.drain()
                    return
                if number == 2:
                    writer.write(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Accept: {auth}\r\n\r\n".encode()
                    )
                    await writer.drain()
                    await reader.read(4096)
                    return
                accept = _accept(headers["sec-websocket-key"])
                reason = f"token {TOKEN} revoked".encode()
                close = struct.pack("!H", 4001) + reason
                writer.write(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".encode()
                    + bytes([0x88, len(close)])
                    + close
                )
                await writer.drain()
                await reader.read(4096)  # the client's close reply; then the server closes
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, KeyError):
            pass
        finally:
            writer.transport.abort()

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[Echoer]:
        async with tcp_server(self._serve) as port:
            self.port = port
            yield self


CONFIG = """
[daemon]
log_level = "debug"
log_format = "json"
shutdown_timeout = "1s"

[connections.up]
url = "ws://feed%40user:{password}@127.0.0.1:{port}/feed?jwt={jwt}&pwd={pwd}&access={access}&page=2"
transport = "{transport}"
compression = "none"
close_timeout = "300ms"
headers = {{ X-Token = "Bearer ${{file:token.txt}}" }}
log_query_keys = ["page"]
reconnect = {{ initial = "50ms", max = "100ms" }}

[routes.all]
handlers = ["out"]

[handlers.out]
plugin = "jsonl"
path = "{folder}/out.jsonl"
"""


def write_config(folder: Path, port: int, transport: str) -> Path:
    (folder / "token.txt").write_text(TOKEN + "\n")
    config = folder / "wsroute.toml"
    config.write_text(
        CONFIG.format(
            password=PASSWORD,
            port=port,
            jwt=JWT,
            pwd=PWD,
            access=ACCESS,
            transport=transport,
            folder=folder,
        )
    )
    return config


def json_lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                found.append(record)
    return found


@pytest.mark.parametrize(
    "transport",
    [
        "websockets",
    ],
)
async def test_no_resolved_secret_reaches_the_daemons_output(
    tmp_path: Path, transport: str
) -> None:
    echoer = Echoer()
    async with echoer.serve():
        config = write_config(tmp_path, echoer.port, transport)
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
        out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = await anyio.open_process(
                [WSROUTE, "run", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
            )
        try:
            with anyio.fail_after(20):  # until a close reason with the token was logged
                while not any(
                    e.get("event") == "connection_lost" and e.get("code") == 4001
                    for e in json_lines(err_path.read_text(errors="replace"))
                ):
                    await anyio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                with anyio.move_on_after(5):
                    await proc.wait()
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    # The upstream did get the credentials (so there was something to leak).
    assert echoer.seen[0].startswith("Basic ")
    assert f"Bearer {TOKEN}" in echoer.seen[0]
    output = stdout + stderr
    for secret in SECRETS:
        assert secret not in output, secret
    logged = json_lines(stderr)
    connecting = [e for e in logged if e.get("event") == "connecting"]
    assert connecting
    assert connecting[0]["url"] == (
        f"ws://***@127.0.0.1:{echoer.port}/feed?jwt=***&pwd=***&access=***&page=2"
    )
    lost = [e for e in logged if e.get("event") == "connection_lost" and e.get("code") == 4001]
    assert lost[0]["reason"] == "token *** revoked"
    rejected = [e for e in logged if e.get("event") == "handshake_rejected"]
    assert rejected
    assert rejected[0]["status"] == 401


def test_check_prints_no_secret(tmp_path: Path) -> None:
    config = write_config(tmp_path, 9, "websockets")
    result = subprocess.run(
        [WSROUTE, "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr


# -- the processor and the registry -------------------------------------------------------


def test_registered_values_are_masked_at_any_depth_and_short_ones_ignored() -> None:
    register_secrets(["unit-s3cret-A1", 'a-b"c\\d-quoted', "ab", 12])  # type: ignore[list-item]
    event = {
        "event": "failed: unit-s3cret-A1!",
        "nested": {"list": ["x unit-s3cret-A1 y", ("unit-s3cret-A1",)], "n": 5},
        "json": json.dumps({"t": 'a-b"c\\d-quoted'}),
        "short": "ab cd ab",
    }
    out = redact_values(None, "info", event)
    assert out["event"] == "failed: ***!"
    assert out["nested"] == {"list": ["x *** y", ("***",)], "n": 5}
    assert out["json"] == '{"t": "***"}'
    assert out["short"] == "ab cd ab"  # under MIN_SECRET_LENGTH: not a secret
    assert mask_secrets("unit-s3cret-A1unit-s3cret-A1") == "******"


def test_a_longer_secret_containing_a_shorter_one_is_masked_whole() -> None:
    register_secrets(["inner-secret-77", "outer-inner-secret-77-tail"])
    assert mask_secrets("x outer-inner-secret-77-tail y") == "x *** y"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_configured_pipeline_masks_events_exceptions_and_stdlib_records(fmt: str) -> None:
    secret = "pipeline-s3cret-Z9"
    register_secrets([secret])
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("websockets").level)
    try:
        wslogging.configure("debug", fmt, stream=stream, environ={})
        log = structlog.get_logger("test")
        log.info("event", detail=f"value {secret}", nested={"a": [secret]})
        try:
            raise RuntimeError(f"server said {secret}")
        except RuntimeError:
            log.exception("crashed")
        logging.getLogger("websockets.client").warning("echo %s", secret)
    finally:
        root.handlers[:], level, ws_level = saved
        root.setLevel(level)
        logging.getLogger("websockets").setLevel(ws_level)
    text = stream.getvalue()
    assert secret not in text
    assert "***" in text
    assert "server said ***" in text
    assert "echo ***" in text


def test_loading_a_config_registers_what_it_resolved(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("file-s3cret-Q1\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api").write_text("cred-s3cret-Q2")
    text = """
[connections.a]
url = "wss://u-s3cret-Q3:p%40ss-s3cret-Q4@example.com/?session=sess-s3cret-Q5&page=page-value-Q6"
[connections.a.headers]
X-Token = "Bearer ${file:tok}"
X-Api-Key = "${credential:api}"
X-Env = "${ENVSECRET}"
[routes.r]
handlers = ["h"]
[handlers.h]
plugin = "jsonl"
path = "/tmp/never.jsonl"
"""
    loads(
        text,
        path=str(tmp_path / "wsroute.toml"),
        environ={"CREDENTIALS_DIRECTORY": str(creds), "ENVSECRET": "env-s3cret-Q7"},
    )
    for value in (
        "file-s3cret-Q1",
        "cred-s3cret-Q2",
        "u-s3cret-Q3",
        "p%40ss-s3cret-Q4",
        "p@ss-s3cret-Q4",
        "sess-s3cret-Q5",
        "env-s3cret-Q7",
        "Bearer file-s3cret-Q1",
    ):
        assert mask_secrets(f"<{value}>") == "<***>", value
    # Not secret-looking: masked in URLs by redact_url, but not everywhere.
    assert mask_secrets("page-value-Q6") == "page-value-Q6"


def test_plugin_options_marked_secret_are_registered() -> None:
    from dataclasses import dataclass, field

    from wsroute.validate import secret_values

    @dataclass
    class Inner:
        key: str = field(default="", metadata={"secret": True})

    @dataclass
    class Options:
        password: str = field(default="", metadata={"secret": True})
        headers: dict[str, str] = field(default_factory=dict, metadata={"secret": True})
        name: str = "visible"
        inner: Inner = field(default_factory=Inner)

    options = Options("pw-1234", {"X": "hdr-5678"}, "visible", Inner("inner-9012"))
    assert sorted(secret_values(options)) == ["hdr-5678", "inner-9012", "pw-1234"]
