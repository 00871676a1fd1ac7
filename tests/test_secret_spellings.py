"""A secret is masked however it is spelled where it turns up again: percent-encoded or not.

A real ``wsroute run`` against a hostile upstream that echoes the request's
query string, as it arrived (percent-encoded) and decoded, in its close
reason; the secret query value needs encoding (``/``, ``+``, ``=``, a space).
Neither spelling may reach the log. Plus the masking of each spelling alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import anyio
import pytest

from wsroute.logging import mask_secrets, register_secrets

from conftest import tcp_server

pytestmark = pytest.mark.anyio

WSROUTE = str(Path(sys.executable).with_name("wsroute"))
SECRET = "sig/9Q+x7 w=="  # a query value that a URL must percent-encode
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.mark.parametrize(
    "spelled",
    [
        SECRET,
        urllib.parse.quote(SECRET, safe=""),
        urllib.parse.quote(SECRET, safe="").replace("%2F", "%2f").replace("%2B", "%2b"),
        urllib.parse.quote_plus(SECRET, safe=""),
        urllib.parse.quote(SECRET, safe="/+="),
        json.dumps(urllib.parse.quote(SECRET, safe=""))[1:-1],
    ],
)
def test_every_spelling_of_a_registered_secret_is_masked(spelled: str) -> None:
    register_secrets([SECRET])
    assert mask_secrets(f"closed: token={spelled} revoked") == "closed: token=*** revoked"


def test_a_secret_registered_encoded_is_masked_decoded_too() -> None:
    encoded = "pa%2Fss%3Dw0rd-xyz"
    register_secrets([encoded])
    assert mask_secrets("echo pa/ss=w0rd-xyz") == "echo ***"


async def _echo_query(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Upgrade, then close with a reason holding the query string, encoded and decoded."""
    try:
        async with asyncio.timeout(10):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            target = head.split(" ", 2)[1]
            query = target.partition("?")[2]
            key = next(
                line.partition(":")[2].strip()
                for line in head.split("\r\n")
                if line.lower().startswith("sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
            reason = f"bad {query} | {urllib.parse.unquote_plus(query)}".encode()[:120]
            close = struct.pack("!H", 4001) + reason
            writer.write(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".encode()
                + bytes([0x88, len(close)])
                + close
            )
            await writer.drain()
            await reader.read(4096)
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, StopIteration):
        pass
    finally:
        writer.transport.abort()


async def test_an_echoed_percent_encoded_query_secret_is_never_logged(tmp_path: Path) -> None:
    async with tcp_server(_echo_query) as port:
        query = urllib.parse.urlencode({"token": SECRET, "page": "2"})
        assert urllib.parse.quote_plus(SECRET) in query  # the URL holds it encoded
        config = tmp_path / "wsroute.toml"
        config.write_text(
            f"""
[daemon]
log_level = "info"
log_format = "json"
shutdown_timeout = "1s"

[connections.up]
url = "ws://127.0.0.1:{port}/feed?{query}"
close_timeout = "300ms"
reconnect = {{ initial = "200ms", max = "500ms" }}

[handlers.log]
plugin = "log"

[routes.all]
handlers = ["log"]
"""
        )
        err_path = tmp_path / "stderr"
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
        with err_path.open("wb") as err:
            proc = await anyio.open_process(
                [WSROUTE, "run", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        try:
            with anyio.fail_after(20):
                while not _lost(err_path):
                    await anyio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                with anyio.move_on_after(5):
                    await proc.wait()
    output = err_path.read_text(errors="replace")
    reason = _lost(err_path)[0]["reason"]
    assert reason.startswith("bad token=***&page=2 | token=***&page=2"), reason
    for spelled in (
        SECRET,
        urllib.parse.quote_plus(SECRET),
        urllib.parse.quote(SECRET, safe=""),
        "sig/9Q",
        "sig%2F9Q",
    ):
        assert spelled not in output, spelled


def _lost(path: Path) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "connection_lost" and record.get("code") == 4001:
                found.append(record)
    return found


async def _redirect_then_upgrade(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """``/start``: a 307 to ``/next`` on the same origin; ``/next``: the upgrade, then silence."""
    try:
        async with asyncio.timeout(10):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            if head.split(" ", 2)[1].startswith("/start"):
                writer.write(
                    b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /next\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                return
            key = next(
                line.partition(":")[2].strip()
                for line in head.split("\r\n")
                if line.lower().startswith("sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
            writer.write(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".encode()
            )
            await writer.drain()
        await reader.read(4096)
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, StopIteration):
        pass
    finally:
        writer.transport.abort()


async def test_redirect_followed_says_whether_credentials_were_sent(tmp_path: Path) -> None:
    """``credentials`` is a secret-looking key, but its ``sent``/``dropped`` is not a secret:
    the log line says what the docs say it does, while the header value stays masked."""
    async with tcp_server(_redirect_then_upgrade) as port:
        config = tmp_path / "wsroute.toml"
        config.write_text(
            f"""
[daemon]
log_level = "info"
log_format = "json"
shutdown_timeout = "1s"

[connections.up]
url = "ws://127.0.0.1:{port}/start"
headers = {{ Authorization = "Bearer redirect-s3cret-77" }}
close_timeout = "300ms"

[handlers.log]
plugin = "log"

[routes.all]
handlers = ["log"]
"""
        )
        err_path = tmp_path / "stderr"
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
        with err_path.open("wb") as err:
            proc = await anyio.open_process(
                [WSROUTE, "run", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        try:
            with anyio.fail_after(20):
                while not _events(err_path, "connected"):
                    await anyio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                with anyio.move_on_after(5):
                    await proc.wait()
    (followed,) = _events(err_path, "redirect_followed")
    assert (followed["status"], followed["same_origin"], followed["credentials"]) == (
        307,
        True,
        "sent",
    )
    assert "redirect-s3cret-77" not in err_path.read_text(errors="replace")


def _events(path: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found
