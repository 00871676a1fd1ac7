"""The ``exec`` sink with real child processes (small Python programs)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from wsroute import ConfigError
from wsroute.plugins.exec import ExecError, ExecHandler
from wsroute.testing import (
    RecordingContext,
    ScriptedUpstream,
    build_handler,
    message,
    run_handler,
    run_outage,
    wait_until,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def program(code: str, *args: str) -> list[str]:
    """A command running ``code`` with this Python."""
    return [sys.executable, "-c", textwrap.dedent(code), *args]


# Appends each stdin line to argv[1], as "<pid> <line>", on disk at once.
APPEND = """
    import os, sys
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for line in sys.stdin.buffer:
        os.write(fd, str(os.getpid()).encode() + b" " + line)
"""


def lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        pid, _, rest = line.partition(b" ")
        out.append((int(pid), json.loads(rest)))
    return out


@asynccontextmanager
async def started(
    options: dict[str, Any], ctx: RecordingContext | None = None
) -> AsyncIterator[Any]:
    handler = build_handler("exec", options, ctx=ctx)
    async with run_handler(handler):
        yield handler


# --------------------------------------------------------------------------- options


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="program not found"):
        build_handler("exec", {"command": ["/nonexistent/tool"]})
    with pytest.raises(ConfigError, match=r"handlers\.test\.command: must name a program"):
        build_handler("exec", {"command": []})
    with pytest.raises(ConfigError, match="max_processes"):
        build_handler("exec", {"command": [sys.executable], "max_processes": 0})
    with pytest.raises(ConfigError, match="cwd"):
        build_handler("exec", {"command": [sys.executable], "cwd": str(tmp_path / "missing")})


# --------------------------------------------------------------------------- long-lived


@pytest.mark.anyio
async def test_long_lived_child_gets_one_json_line_per_message(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with started({"command": program(APPEND, str(out))}) as handler:
        for seq in (1, 2, 3):
            await handler.handle(message({"n": seq}, key="tick", connection="up", seq=seq))
        await wait_until(lambda: len(lines(out)) == 3)
        pid = handler.pid
    got = lines(out)
    assert {p for p, _ in got} == {pid}  # one process for all of them
    assert [rec["body"]["n"] for _, rec in got] == [1, 2, 3]
    assert (got[0][1]["connection"], got[0][1]["key"], got[0][1]["seq"]) == ("up", "tick", 1)


@pytest.mark.anyio
async def test_child_never_inherits_the_notify_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    out = tmp_path / "env.json"
    dump_env = """
        import json, os, sys
        sys.stdin.readline()
        with open(sys.argv[1], "w") as fh:
            json.dump(dict(os.environ), fh)
    """
    options = {"command": program(dump_env, str(out)), "env": {"EXTRA": "yes"}}
    async with started(options) as handler:
        await handler.handle(message({}))
        await wait_until(lambda: out.exists() and out.stat().st_size > 0)
    env = json.loads(out.read_text())
    assert "NOTIFY_SOCKET" not in env
    assert "WATCHDOG_USEC" not in env
    assert env["EXTRA"] == "yes"
    assert env["PATH"] == os.environ["PATH"]


@pytest.mark.anyio
async def test_child_that_exits_is_restarted_with_backoff(tmp_path: Path) -> None:
    out = tmp_path / "out"
    one_then_exit = """
        import os, sys
        line = sys.stdin.buffer.readline()
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, str(os.getpid()).encode() + b" " + line)
        sys.exit(3)
    """
    options = {
        "command": program(one_then_exit, str(out)),
        "restart": {"initial": "50ms", "max": "200ms"},
    }
    with capture_logs() as logs:
        async with started(options) as handler:
            used: set[int | None] = {None}
            for seq in (1, 2, 3):
                # A fresh child each time (a line written to a child on its way out
                # would be lost with it: that is what ack = true is for).
                await wait_until(lambda: handler.pid not in used)
                used.add(handler.pid)
                await handler.handle(message({"n": seq}, seq=seq))
            await wait_until(lambda: len(lines(out)) == 3)
    got = lines(out)
    assert [rec["body"]["n"] for _, rec in got] == [1, 2, 3]
    assert len({pid for pid, _ in got}) == 3  # a fresh child each time
    exits = [e for e in logs if e["event"] == "exec_exited"]
    assert exits
    assert {e["status"] for e in exits} == {3}
    delays = [e["delay"] for e in logs if e["event"] == "exec_restart_scheduled"]
    # Doubling from restart.initial (the third child may be stopped before it exits).
    assert delays[:2] == [0.05, 0.1]


@pytest.mark.anyio
async def test_stdout_lines_are_sent_upstream_as_replies(tmp_path: Path) -> None:
    echo = """
        import json, sys
        for line in sys.stdin:
            rec = json.loads(line)
            print(json.dumps({"ack": rec["seq"]}), flush=True)
            print("not json", flush=True)
    """
    ctx = RecordingContext("acks", connections=["up"])
    with capture_logs() as logs:
        async with started({"command": program(echo), "reply_connection": "up"}, ctx) as handler:
            for seq in (1, 2):
                await handler.handle(message({}, seq=seq))
            await wait_until(lambda: len(ctx.sent) == 2)
    assert [(conn, out.json) for conn, out in ctx.sent] == [("up", {"ack": 1}), ("up", {"ack": 2})]
    assert [e["event"] for e in logs].count("exec_reply_invalid") == 2


@pytest.mark.anyio
async def test_stop_escalates_to_kill_for_a_child_that_will_not_exit(tmp_path: Path) -> None:
    stubborn = """
        import signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.stdin.read()              # EOF at stop ...
        time.sleep(60)                # ... and still it does not exit
    """
    handler = build_handler("exec", {"command": program(stubborn), "stop_timeout": "200ms"})
    with capture_logs() as logs, anyio.fail_after(10):
        async with run_handler(handler):
            await handler.handle(message({}))
            pid = handler.pid
            assert pid is not None
    actions = [e["action"] for e in logs if e["event"] == "exec_stop_timeout"]
    assert actions == ["terminate", "kill"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.anyio
async def test_a_line_cut_by_the_timeout_restarts_the_child(tmp_path: Path) -> None:
    # The child does not read: a big line fills the pipe, the handler's timeout
    # strikes mid-line, and the half-written line must not reach the next message.
    deaf = """
        import time
        time.sleep(60)
    """
    options = {"command": program(deaf), "restart": {"initial": "50ms"}}
    with capture_logs() as logs:
        async with started(options) as handler:
            first = handler.pid
            with pytest.raises(TimeoutError), anyio.fail_after(0.5):
                await handler.handle(message("x" * 500_000))
            await wait_until(lambda: handler.pid not in (None, first))
    assert "exec_torn_line" in [e["event"] for e in logs]


@pytest.mark.anyio
async def test_ack_waits_for_the_answer(tmp_path: Path) -> None:
    out = tmp_path / "out"
    answer_each = """
        import os, sys
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        for line in sys.stdin.buffer:
            os.write(fd, str(os.getpid()).encode() + b" " + line)
            print("done", flush=True)
    """
    async with started({"command": program(answer_each, str(out)), "ack": True}) as handler:
        for seq in (1, 2, 3):
            await handler.handle(message({"n": seq}, seq=seq))
            assert len(lines(out)) == seq  # answered = the program did it already
        async with anyio.create_task_group() as tg:  # answers come back in order
            for seq in range(4, 20):
                tg.start_soon(handler.handle, message({"n": seq}, seq=seq))
    assert [rec["body"]["n"] for _, rec in lines(out)] == list(range(1, 20))


@pytest.mark.anyio
async def test_ack_fails_lines_a_dying_child_did_not_answer(tmp_path: Path) -> None:
    # The program crashes on the message with "crash" in it: that one fails
    # (and would be retried with the next child); the ones after it are not lost.
    crash_on = """
        import json, sys
        for line in sys.stdin:
            if json.loads(line)["body"] == "crash":
                sys.exit(1)
            print("ok", flush=True)
    """
    options = {"command": program(crash_on), "ack": True, "restart": {"initial": "50ms"}}
    with capture_logs() as logs:
        async with started(options) as handler:
            await handler.handle(message("fine"))
            with pytest.raises(ExecError, match="exited before answering"):
                await handler.handle(message("crash"))
            with anyio.fail_after(10):
                await handler.handle(message("fine again"))  # the next child answers
    assert "exec_unanswered" in [e["event"] for e in logs]


# --------------------------------------------------------------------------- per-message


@pytest.mark.anyio
async def test_per_message_runs_a_process_each(tmp_path: Path) -> None:
    out = tmp_path / "out"
    options = {"command": program(APPEND, str(out)), "mode": "per-message"}
    async with started(options) as handler:
        for seq in (1, 2):
            await handler.handle(message({"n": seq}, seq=seq))
    got = lines(out)  # handled = the process exited: the lines are there already
    assert [rec["body"]["n"] for _, rec in got] == [1, 2]
    assert got[0][0] != got[1][0]


@pytest.mark.anyio
async def test_per_message_failure_raises_with_stderr(tmp_path: Path) -> None:
    failing = """
        import sys
        sys.stdin.read()
        sys.stderr.write("disk on fire\\n")
        sys.exit(2)
    """
    handler: ExecHandler = build_handler(
        "exec", {"command": program(failing), "mode": "per-message"}
    )
    with pytest.raises(ExecError, match=r"exited with status 2: disk on fire"):
        await handler.handle(message({}))


@pytest.mark.anyio
async def test_per_message_replies(tmp_path: Path) -> None:
    answer = """
        import json, sys
        rec = json.loads(sys.stdin.read())
        print(json.dumps({"seen": rec["seq"]}))
    """
    ctx = RecordingContext("answers")
    options = {"command": program(answer), "mode": "per-message", "reply_connection": "up"}
    handler = build_handler("exec", options, ctx=ctx)
    await handler.handle(message({}, seq=7))
    assert [(conn, out.json) for conn, out in ctx.sent] == [("up", {"seen": 7})]


@pytest.mark.anyio
async def test_per_message_runs_at_most_max_processes(tmp_path: Path) -> None:
    log = tmp_path / "log"
    timed = """
        import os, sys, time
        sys.stdin.read()
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, b"+\\n")
        time.sleep(0.2)
        os.write(fd, b"-\\n")
    """
    options = {"command": program(timed, str(log)), "mode": "per-message", "max_processes": 2}
    handler = build_handler("exec", options)
    async with anyio.create_task_group() as tg:
        for seq in range(6):
            tg.start_soon(handler.handle, message({}, seq=seq))
    running = most = 0
    for mark in log.read_text().split():
        running += 1 if mark == "+" else -1
        most = max(most, running)
    assert most == 2


# --------------------------------------------------------------------------- the daemon, an outage

CONFIG = """
[daemon]
dead_letter = "dlq"
shutdown_timeout = "5s"

[connections.up]
url = "${WSROUTE_UPSTREAM}"
codec = "json"
ping_interval = 0

[routes.all]
handlers = ["pipe"]

[handlers.pipe]
plugin = "exec"
command = ${COMMAND}
ack = true
restart = { initial = "50ms", max = "100ms" }
timeout = "500ms"
retries = 1

[handlers.dlq]
plugin = "jsonl"
path = "${WSROUTE_TMP}/dead.jsonl"
"""

# Exits at once while the file argv[1] exists (the program is "down"), else appends
# lines and answers each (ack = true).
FLAKY = """
    import os, sys
    if os.path.exists(sys.argv[1]):
        sys.exit(1)
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for line in sys.stdin.buffer:
        os.write(fd, str(os.getpid()).encode() + b" " + line)
        print("ok", flush=True)
"""


@pytest.mark.anyio
async def test_outage_dead_letters_then_recovers(tmp_path: Path, wsroute_daemon: Any) -> None:
    down, out = tmp_path / "down", tmp_path / "out"
    command = json.dumps(program(FLAKY, str(down), str(out)))
    upstream = ScriptedUpstream()
    # The command goes in as TOML (a JSON array of strings is one), not as a ${...} value.
    config = CONFIG.replace("${COMMAND}", command)
    async with wsroute_daemon(config, upstream=upstream) as daemon:
        pipe = daemon.handler("pipe")

        def crash() -> None:
            down.touch()
            os.kill(pipe.pid, 9)  # the program crashes, and keeps failing to start

        await run_outage(
            daemon,
            "pipe",
            ready=lambda: pipe.pid is not None,
            stop=crash,
            start=down.unlink,  # it starts again
            delivered=lambda: len(lines(out)),
            held=False,  # a command that exits is a failure, not an outage
        )
        dead_file = daemon.tmp_path / "dead.jsonl"
    assert [rec["body"]["n"] for _, rec in lines(out)] == [1, 3]
    dead = [json.loads(line) for line in dead_file.read_text().splitlines()]
    assert [d["body"]["n"] for d in dead] == [2]
    assert dead[0]["reason"] in ("timeout", "handler_error")  # waited, or the child died
