"""The ``wsroute`` command as an operator runs it: real subprocesses, real signals."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wsroute.config import loads
from wsroute.exceptions import ConfigError

from conftest import REPO

WSROUTE = str(Path(sys.executable).with_name("wsroute"))


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WSROUTE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
        check=False,
    )


def events(stderr: str) -> list[dict[str, Any]]:
    """JSON log lines (the daemon logs JSON when stderr is not a TTY)."""
    out = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("wsroute ")


def test_check_accepts_the_example_config_and_prints_the_routes() -> None:
    result = run("check", "-c", str(REPO / "config/wsroute.example.toml"))
    assert result.returncode == 0, result.stderr
    assert "routes:" in result.stdout
    assert "->" in result.stdout


def test_check_reports_every_error_with_its_key_path_and_exits_78(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        """
[connections.exchange]
url = "ws://127.0.0.1:1/"
ping_intervall = "20s"
reconnect = { max = -1 }

[routes.r]
handlers = ["missing"]

[handlers.h]
plugin = "jsonl"
path = "/tmp/x.jsonl"
overflow = "drop-olds"
"""
    )
    result = run("check", "-c", str(config))
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    text = "\n".join(lines)
    assert "connections.exchange.ping_intervall: unknown key" in text
    assert 'did you mean "ping_interval"' in text
    assert 'connections.exchange.reconnect.max: expected a duration like "30s", got -1' in text
    assert "routes.r.handlers" in text
    assert "missing" in text
    assert "handlers.h.overflow" in text
    assert len(lines) >= 4
    assert all(line.startswith("wsroute: ") for line in lines)


def test_plugin_load_failure_exits_78_naming_the_plugin(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        """
[connections.a]
url = "ws://127.0.0.1:1/"
[routes.r]
handlers = ["h"]
[handlers.h]
plugin = "no_such_module_xyz:Handler"
"""
    )
    result = run("check", "-c", str(config))
    assert result.returncode == 78
    assert "handlers.h.plugin" in result.stderr
    assert "no_such_module_xyz" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    result = run("run", "-c", str(tmp_path / "nope.toml"))
    assert result.returncode == 78
    assert "not found" in result.stderr


def test_plugins_lists_builtins_with_origin_and_options() -> None:
    result = run("plugins")
    assert result.returncode == 0
    for name in ("jsonl", "log", "reply", "json", "struct"):
        assert name in result.stdout
    listing = json.loads(run("plugins", "--json").stdout)
    jsonl = next(p for p in listing if p["name"] == "jsonl")
    assert jsonl["origin"] == "built-in"
    assert any(o["name"] == "path" for o in jsonl["options"])


def test_plugins_says_a_builtin_without_its_extra_is_not_installed() -> None:
    # A fresh install: the sinks' client libraries hidden from a real `wsroute plugins`.
    code = (
        "import sys\n"
        "for module in ('redis', 'nats', 'httpx'):\n"
        "    sys.modules[module] = None\n"
        "from wsroute.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )

    def plugins(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, "plugins", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = plugins()
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stdout
    lines = result.stdout.splitlines()
    expected = {
        "nats  (built-in: wsroute.plugins.nats:NatsHandler)": "nats",
        "redis  (built-in: wsroute.plugins.redis.sink:RedisHandler)": "redis",
        "webhook  (built-in: wsroute.plugins.webhook:WebhookHandler)": "webhook",
        "redis-stream  (built-in: wsroute.plugins.redis.source:RedisStreamSource)": "redis",
        "jetstream  (built-in: wsroute.plugins.jetstream.source:JetStreamSource)": "nats",
    }
    for heading, extra in expected.items():
        at = lines.index(f"  {heading}")
        assert lines[at + 1] == f"      not installed (pip install 'wsroute[{extra}]')"
    assert result.stdout.count("not installed") == len(expected)  # once per plugin

    listing = {(p["kind"], p["name"]): p for p in json.loads(plugins("--json").stdout)}
    assert listing["handler", "redis"]["missing_extra"] == "redis"
    assert listing["handler", "redis"]["error"] is None
    assert listing["source", "redis-stream"]["missing_extra"] == "redis"
    assert listing["handler", "webhook"]["missing_extra"] == "webhook"
    assert listing["handler", "jsonl"]["missing_extra"] is None
    assert listing["handler", "jsonl"]["error"] is None


@pytest.fixture
def upstream() -> Iterator[str]:
    """The reference upstream in its own process, printing its URL."""
    code = (
        "import anyio, sys\n"
        "from wsroute.demo import ReferenceUpstream\n"
        "async def main():\n"
        "    up = ReferenceUpstream(tick_interval=0.005)\n"
        "    async with up.serve() as url:\n"
        "        print(url, flush=True)\n"
        "        await anyio.sleep(60)\n"
        "anyio.run(main)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


DAEMON = """
[daemon]
log_level = "debug"
log_format = "json"
shutdown_timeout = "3s"
dead_letter = "dlq"
event_loop = "{loop}"

[connections.up]
url = "{url}"
codec = "exchange"
headers = {{ Authorization = "Bearer ${{TOKEN}}" }}
[[connections.up.on_connect]]
json = {{ role = "admin", user_id = "cli" }}
[[connections.up.on_connect]]
struct = {{ format = "<i", values = [2] }}
json = ["first", "test"]

[codecs.exchange]
type = "struct"
header = "<i"
fields = ["opcode"]

[routes.all]
key = [1, 2]
handlers = ["archive"]

[handlers.archive]
plugin = "jsonl"
path = "{folder}/archive.jsonl"

[handlers.dlq]
plugin = "jsonl"
path = "{folder}/dead.jsonl"
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_run_routes_frames_and_sigterm_drains_then_exits_0(
    tmp_path: Path, upstream: str, loop: str
) -> None:
    config = tmp_path / "wsroute.toml"
    config.write_text(DAEMON.format(url=upstream, folder=tmp_path, loop=loop))
    proc = subprocess.Popen(
        [WSROUTE, "run", "-c", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, TOKEN="s3cr3t-value"),
    )
    archive = tmp_path / "archive.jsonl"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if archive.exists() and archive.read_text().count("\n") >= 50:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0, stderr
    logged = events(stderr)
    names = [e["event"] for e in logged]
    (started,) = [e for e in logged if e["event"] == "started"]
    assert started["event_loop"] == loop
    assert "shutdown_complete" in names
    assert "delivery_unbalanced" not in names
    totals = {e["handler"]: e for e in logged if e["event"] == "delivery_totals"}
    archived = [json.loads(line) for line in archive.read_text().splitlines()]
    assert totals["archive"]["handled"] == len(archived) >= 50
    assert totals["archive"]["in_flight"] == 0
    seqs = [r["seq"] for r in archived]
    assert seqs == sorted(seqs)
    assert archived[-1]["connection"] == "up"
    assert "s3cr3t" not in stderr  # the header value is never logged


def test_replay_feeds_dead_letters_back_to_their_handler(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    dead.write_text(
        json.dumps(
            {
                "connection": "up",
                "key": 1,
                "seq": 7,
                "received_at": 1.5,
                "fields": {"opcode": 1},
                "body": {"n": 7},
                "reason": "handler_error",
                "handler": "archive",
                "error": "boom",
                "attempts": 4,
            }
        )
        + "\n"
    )
    config = tmp_path / "wsroute.toml"
    config.write_text(DAEMON.format(url="ws://127.0.0.1:1/", folder=tmp_path, loop="asyncio"))
    result = run("replay", "-c", str(config), str(dead), env={"TOKEN": "x"})
    assert result.returncode == 0, result.stderr
    replayed = [json.loads(line) for line in (tmp_path / "archive.jsonl").read_text().splitlines()]
    assert len(replayed) == 1
    assert replayed[0]["seq"] == 7
    assert replayed[0]["body"] == {"n": 7}
    assert "reason" not in replayed[0]


@pytest.mark.slow
def test_demo_with_a_missing_config_is_one_line_and_78(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = run("demo", "-c", str(missing), "--duration", "1")
    assert result.returncode == 78
    assert result.stderr.strip() == f"wsroute: {missing}: cannot read it: No such file or directory"


def test_demo_shows_decoding_routing_and_a_reconnect(tmp_path: Path) -> None:
    result = run("demo", "--duration", "5", env={"TMPDIR": str(tmp_path)}, timeout=40)
    assert result.returncode == 0, result.stderr
    # The demo keeps its dead letters and config, and prints how to replay them.
    (kept,) = tmp_path.glob("wsroute-demo-*")
    assert f"kept in {kept}" in result.stdout
    assert (kept / "dead-letter.jsonl").exists()
    (command,) = [
        line.strip() for line in result.stdout.splitlines() if line.strip().startswith("wsroute ")
    ]
    argv = shlex.split(command)
    assert argv[:3] == ["wsroute", "replay", "-c"]
    assert Path(argv[3]).exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSROUTE_DEMO_")}
    replayed = subprocess.run(
        [WSROUTE, *argv[1:]], capture_output=True, text=True, timeout=30, env=env, check=False
    )
    # The malformed frame is still malformed: dead-lettered again, the documented status 1.
    assert replayed.returncode == 1, replayed.stderr
    assert "1 read, 0 handled, 1 dead-lettered again, 0 failed" in replayed.stderr
    out = result.stderr
    assert "demo_started" in out
    assert "key=1" in out
    assert "key=news" in out
    assert "connection_lost" in out
    assert "$connected" in out
    assert out.count("welcome") >= 2  # the login was replayed after the reconnect
    assert "frame_undecodable" in out
    assert "shutdown_complete" in out


def test_a_misspelt_delivery_key_gets_a_hint(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        """
[connections.a]
url = "ws://127.0.0.1:1/"
[routes.r]
handlers = ["h"]
[handlers.h]
plugin = "log"
overflw = "drop-oldest"
"""
    )
    result = run("check", "-c", str(config))
    assert result.returncode == 78
    assert 'handlers.h.overflw: unknown key (did you mean "overflow"?)' in result.stderr


def test_a_handler_that_cannot_start_exits_78_with_one_line(tmp_path: Path) -> None:
    # (A missing jsonl folder is refused before any handler starts: tests/test_preflight.py.)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "stuck.py").write_text(
        "class Stuck:\n"
        "    async def start(self):\n"
        "        raise OSError('device busy')\n"
        "    def __init__(self, options, ctx):\n"
        "        pass\n"
        "    async def handle(self, message):\n"
        "        pass\n"
    )
    config = tmp_path / "c.toml"
    config.write_text(
        f"""
[daemon]
plugin_paths = ["{plugins}"]
[connections.a]
url = "ws://127.0.0.1:1/"
[routes.r]
handlers = ["h"]
[handlers.h]
plugin = "stuck:Stuck"
"""
    )
    result = run("run", "-c", str(config))
    assert result.returncode == 78
    errors = [line for line in result.stderr.splitlines() if line.startswith("wsroute: ")]
    assert len(errors) == 1
    assert "handlers.h: could not start" in errors[0]
    assert "Traceback" not in result.stderr


def test_uvloop_not_installed_is_a_config_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else find_spec(name)
    )
    with pytest.raises(ConfigError) as caught:
        loads('[daemon]\nevent_loop = "uvloop"\n')
    (issue,) = caught.value.issues
    assert issue.path.startswith("daemon")
    assert 'pip install "wsroute[uvloop]"' in issue.message


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    """`wsroute schema | head -1`: the pipe closes under a long output."""
    proc = subprocess.Popen(
        [WSROUTE, "schema", "--builtins-only"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 141  # 128 + SIGPIPE, as a shell reports it
    assert stderr == b""
