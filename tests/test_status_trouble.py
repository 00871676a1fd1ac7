"""``wsroute status`` shows trouble in its plain text: a real daemon fed frames its
codec refuses and keys no route takes.

The upstream (a websockets server in a thread) sends a tick, a frame that is not
JSON and a frame with a key no route names, over and over. The text ``status``
prints must then show, on the connection's line, the decode errors, the unmatched
count and the last error with its age, and name the refused frames among the
problems — the figures an operator otherwise finds only in ``--json``. And
``wsroute tap --handler`` on the dead-letter handler shows the dead letters as
they are written, each with its reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

pytestmark = pytest.mark.slow

WSROUTE = str(Path(sys.executable).with_name("wsroute"))


@contextlib.contextmanager
def troubled_upstream() -> Iterator[str]:
    def talk(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            for n in range(100_000):
                if n % 3 == 0:
                    ws.send(json.dumps({"type": "tick", "n": n}))
                elif n % 3 == 1:
                    ws.send("{not json " + str(n))
                else:
                    ws.send(json.dumps({"type": "gossip", "n": n}))
                with contextlib.suppress(TimeoutError):
                    ws.recv(timeout=0.02)

    server = serve(talk, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
    finally:
        server.shutdown()
        thread.join(5)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # As piped into a file on a wide terminal: plain text, no column squeezed out.
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [WSROUTE, *args], capture_output=True, text=True, timeout=30, check=False, env=env
    )


def test_status_text_shows_decode_errors_unmatched_and_the_last_error_with_its_age(
    tmp_path: Path,
) -> None:
    with tempfile.TemporaryDirectory(prefix="wsr-") as short:  # a Unix socket path is short
        sock = Path(short) / "api.sock"
        config = tmp_path / "wsroute.toml"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
        }
        with troubled_upstream() as url:
            config.write_text(
                f"""
[daemon]
log_level = "error"
log_format = "json"
shutdown_timeout = "1s"
dead_letter = "dlq"

[daemon.api]
listen = ["unix:{sock}"]

[connections.exchange]
url = "{url}"
codec = "json"

[routes.ticks]
key = "tick"
handlers = ["archive"]

[handlers.archive]
plugin = "jsonl"
path = "{tmp_path / "archive.jsonl"}"

[handlers.dlq]
plugin = "jsonl"
path = "{tmp_path / "dead.jsonl"}"
""",
                encoding="utf-8",
            )
            with (tmp_path / "stderr.log").open("wb") as err:
                daemon = subprocess.Popen(
                    [WSROUTE, "run", "-c", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env=env,
                )
            try:
                doc: dict[str, Any] = {}
                deadline = time.monotonic() + 20
                while True:
                    result = run("status", "-c", str(config), "--json")
                    if result.returncode == 0:
                        doc = json.loads(result.stdout)["connections"]["exchange"]
                        if doc["decode_errors"] >= 3 and doc["unmatched"] >= 3:
                            break
                    assert daemon.poll() is None, (tmp_path / "stderr.log").read_text()
                    assert time.monotonic() < deadline, result.stdout + result.stderr
                    time.sleep(0.1)
                assert doc["last_decode_error_at"] <= time.time()

                text = run("status", "-c", str(config))
                assert text.returncode == 0, text.stderr
                lines = text.stdout.splitlines()
                header = next(
                    (x for x in lines if x.lstrip().startswith("connection ")), text.stdout
                )
                assert "decode errors" in header, text.stdout
                assert "unmatched" in header
                row = next(x for x in lines if x.startswith("exchange"))
                # connection, state, since, last frame, frames, reconnects, decode
                # errors, unmatched, then the last error with its age.
                figures = re.findall(r"(?<![\w.])\d[\d,]*(?![\w.])", row.split("decode_error")[0])
                decode_errors, unmatched = (int(f.replace(",", "")) for f in figures[-2:])
                assert decode_errors >= 3
                assert unmatched >= 3
                assert re.search(r"decode_error: .+ \(\d[\d.]*(ms|s|m|h|d)[^)]* ago\)$", row), row
                assert "problems:" in text.stdout
                assert re.search(
                    r"connection exchange: [\d,]+ frames the codec refused, the last: .+"
                    r" \(dead-lettered\)",
                    text.stdout,
                ), text.stdout

                # The dead-letter handler's tap shows what it receives: dead letters,
                # each with its reason (they are never routed, so no route shows them).
                tap = run("tap", "-c", str(config), "--handler", "dlq", "--limit", "3")
                assert tap.returncode == 0, tap.stderr
                records = [json.loads(line) for line in tap.stdout.splitlines()]
                assert len(records) == 3, tap.stdout
                for rec in records:
                    assert rec["reason"] == "decode_error", rec
                    assert rec["handlers"] == ["dlq"], rec
                    assert rec["body"].startswith("{not json"), rec
                    assert rec["connection"] == "exchange", rec
            finally:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(15)
                finally:
                    if daemon.poll() is None:
                        daemon.kill()
                        daemon.wait()
            dead = [json.loads(x) for x in (tmp_path / "dead.jsonl").read_text().splitlines()]
            assert {d["reason"] for d in dead} >= {"decode_error"}
