"""Start-time preconditions: what `wsroute check` refuses is what `wsroute run` would refuse.

Through the real CLI in a subprocess: TLS files, the jsonl handler's folder, a
plugin's own `check` hook (a module on a `plugin_paths` folder), the start
(exit 78, never a traceback) and a reload that is rejected.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from wsroute import ConfigError, Issue, check_output_file
from wsroute.config import TlsSection
from wsroute.tls import tls_context

WSROUTE = str(Path(sys.executable).with_name("wsroute"))

AS_ROOT = os.geteuid() == 0


def wsroute(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WSROUTE, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, **(env or {})),
        check=False,
    )


def check(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Any:
    config = tmp_path / "wsroute.toml"
    config.write_text(text)
    return wsroute("check", "-c", str(config), env=env)


def refused(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The problem lines of a refused config: exit 78, one line each, no traceback."""
    assert result.returncode == 78, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("wsroute: ")]


CONNECTION = """
[connections.up]
url = "wss://127.0.0.1:1/"
codec = "json"
tls = {{ ca_file = "{ca}", cert_file = "{cert}", key_file = "{key}" }}
"""


def test_check_refuses_missing_tls_files_naming_key_and_path(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("not checked for content here\n")
    text = CONNECTION.format(ca=tmp_path / "ca.pem", cert=cert, key=tmp_path / "client.key")
    lines = refused(check(tmp_path, text))
    assert len(lines) == 2, lines
    assert (
        f'connections.up.tls.ca_file: cannot read "{tmp_path / "ca.pem"}": no such file'
        in (lines[0])
    )
    assert "connections.up.tls.key_file" in lines[1]
    assert str(tmp_path / "client.key") in lines[1]


def test_check_refuses_a_tls_file_that_is_a_folder(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    text = CONNECTION.format(ca=tmp_path, cert=cert, key=cert)
    (line,) = refused(check(tmp_path, text))
    assert "connections.up.tls.ca_file" in line
    assert "a folder, not a file" in line


def test_check_accepts_readable_tls_files(tmp_path: Path) -> None:
    for name in ("ca.pem", "c.pem", "c.key"):
        (tmp_path / name).write_text("x")
    text = CONNECTION.format(
        ca=tmp_path / "ca.pem", cert=tmp_path / "c.pem", key=tmp_path / "c.key"
    )
    result = check(tmp_path, text)
    assert result.returncode == 0, result.stderr


def test_check_refuses_missing_tls_files_of_a_sink(tmp_path: Path) -> None:
    # The websocket sink takes a connection's tls table as its options.
    text = f"""
[handlers.mirror]
plugin = "websocket"
url = "wss://127.0.0.1:1/"
tls = {{ ca_file = "{tmp_path / "mirror-ca.pem"}" }}
"""
    (line,) = refused(check(tmp_path, text))
    assert "handlers.mirror.tls.ca_file" in line
    assert str(tmp_path / "mirror-ca.pem") in line


def jsonl(path: str) -> str:
    return f"""
[handlers.archive]
plugin = "jsonl"
path = "{path}"
"""


def test_check_refuses_a_jsonl_folder_that_does_not_exist(tmp_path: Path) -> None:
    (line,) = refused(check(tmp_path, jsonl(f"{tmp_path}/nowhere/archive.jsonl")))
    assert f'handlers.archive.path: the folder "{tmp_path}/nowhere" does not exist' in line


def test_check_accepts_the_state_directory_systemd_creates(tmp_path: Path) -> None:
    state = tmp_path / "state"  # not there yet: StateDirectory= creates it at start
    env = {"STATE_DIRECTORY": str(state)}
    result = check(tmp_path, jsonl("${STATE_DIRECTORY}/archive.jsonl"), env=env)
    assert result.returncode == 0, result.stderr
    # ... but not a folder below it, which nothing creates.
    (line,) = refused(check(tmp_path, jsonl("${STATE_DIRECTORY}/sub/archive.jsonl"), env=env))
    assert f'the folder "{state}/sub" does not exist' in line


def test_check_refuses_a_jsonl_path_that_is_a_folder(tmp_path: Path) -> None:
    (line,) = refused(check(tmp_path, jsonl(str(tmp_path))))
    assert "handlers.archive.path" in line
    assert "is a folder" in line


@pytest.mark.skipif(not AS_ROOT, reason="what a check run as root says")
def test_check_as_root_only_warns_about_a_folder_only_root_can_write(tmp_path: Path) -> None:
    folder = tmp_path / "root-only"
    folder.mkdir(mode=0o755)
    result = check(tmp_path, jsonl(f"{folder}/archive.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "warning: handlers.archive.path: checked as root" in result.stdout
    folder.chmod(0o775)  # a group may write: no warning
    result = check(tmp_path, jsonl(f"{folder}/archive.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "checked as root" not in result.stdout


@pytest.mark.skipif(AS_ROOT, reason="root may write anywhere")
def test_check_as_another_user_refuses_a_folder_it_cannot_write(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    try:
        (line,) = refused(check(tmp_path, jsonl(f"{folder}/archive.jsonl")))
    finally:
        folder.chmod(0o755)
    assert "handlers.archive.path" in line
    assert "is not writable by" in line


PLUGIN = '''
from dataclasses import dataclass

from wsroute import Issue


class Guarded:
    """A handler with preconditions."""

    @dataclass
    class Options:
        limit: int = 1
        mode: str = "ok"

    @classmethod
    def check(cls, options):
        if options.mode == "raise":
            raise RuntimeError("the hook itself broke")
        problems = []
        if options.limit > 10:
            problems.append(Issue(f"limit {options.limit} is above what the device takes", "limit"))
        if options.mode == "plain":
            problems.append("a problem of the whole table")
        problems.append(Issue("mode is only advisory", "mode", warning=True))
        return problems

    def __init__(self, options, ctx):
        self.options = options

    async def handle(self, message):
        pass
'''


def with_plugin(tmp_path: Path, options: str) -> str:
    folder = tmp_path / "plugins"
    folder.mkdir(exist_ok=True)
    (folder / "guarded.py").write_text(PLUGIN)
    return f"""
[daemon]
plugin_paths = ["{folder}"]

[handlers.g]
plugin = "guarded:Guarded"
{options}
"""


def test_a_plugin_check_hook_error_gets_the_key_path(tmp_path: Path) -> None:
    lines = refused(check(tmp_path, with_plugin(tmp_path, "limit = 11\nmode = 'plain'")))
    assert any(
        line.endswith("handlers.g.limit: limit 11 is above what the device takes") for line in lines
    ), lines
    assert any(line.endswith("handlers.g: a problem of the whole table") for line in lines), lines
    assert not any("advisory" in line for line in lines)  # warnings are not errors


def test_a_plugin_check_hook_warning_stays_a_warning(tmp_path: Path) -> None:
    result = check(tmp_path, with_plugin(tmp_path, "limit = 3"))
    assert result.returncode == 0, result.stderr
    assert "warning: handlers.g.mode: mode is only advisory" in result.stdout


def test_a_plugin_check_hook_that_raises_is_a_config_error(tmp_path: Path) -> None:
    (line,) = refused(check(tmp_path, with_plugin(tmp_path, "mode = 'raise'")))
    assert "handlers.g: " in line
    assert "check() raised RuntimeError: the hook itself broke" in line


def test_run_refuses_to_start_with_a_missing_tls_file(tmp_path: Path) -> None:
    config = tmp_path / "wsroute.toml"
    config.write_text(
        CONNECTION.format(ca=tmp_path / "ca.pem", cert=tmp_path / "c.pem", key=tmp_path / "c.key")
    )
    lines = refused(wsroute("run", "-c", str(config)))
    assert any(
        f'connections.up.tls.ca_file: cannot read "{tmp_path / "ca.pem"}"' in line for line in lines
    )


def test_tls_context_reports_a_file_gone_after_the_check_as_a_config_error(tmp_path: Path) -> None:
    # The race the preflight cannot close: a file deleted between check and start.
    with pytest.raises(ConfigError) as caught:
        tls_context(TlsSection(ca_file=str(tmp_path / "gone.pem")), "connections.up.tls")
    (issue,) = caught.value.issues
    assert issue.path == "connections.up.tls.ca_file"
    assert str(tmp_path / "gone.pem") in issue.message
    cert = tmp_path / "c.pem"
    cert.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        tls_context(TlsSection(cert_file=str(cert), key_file=str(tmp_path / "k.pem")), "x.tls")
    assert caught.value.issues[0].path == "x.tls.key_file"


def test_check_output_file_is_public_for_plugins(tmp_path: Path) -> None:
    # (Run as root, a folder only root can write to is a warning.)
    assert [i for i in check_output_file(str(tmp_path / "a.jsonl")) if not i.warning] == []
    (issue,) = check_output_file(str(tmp_path / "no" / "a.jsonl"), "archive")
    assert issue == Issue(issue.message, "archive")
    assert "does not exist" in issue.message


def test_a_reload_whose_preconditions_fail_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "wsroute.toml"
    log = tmp_path / "stderr.log"
    base = '[daemon]\nlog_format = "json"\nshutdown_timeout = "2s"\n'
    config.write_text(base + jsonl(f"{tmp_path}/archive.jsonl"))
    with log.open("w") as stderr:
        proc = subprocess.Popen([WSROUTE, "run", "-c", str(config)], stderr=stderr)
    try:
        wait_for_event(log, "started")
        config.write_text(base + jsonl(f"{tmp_path}/gone/archive.jsonl"))
        proc.send_signal(signal.SIGHUP)
        failed = wait_for_event(log, "reload_failed")
        assert failed["keeping"] == "old config"
        invalid = [e for e in events(log) if e["event"] == "reload_invalid"]
        assert any("handlers.archive.path" in e["error"] for e in invalid), invalid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert proc.returncode == 0, log.read_text()


def events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def wait_for_event(log: Path, name: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events(log):
            if event["event"] == name:
                return event
        time.sleep(0.05)
    raise AssertionError(f"no {name} event within {timeout}s:\n{log.read_text()}")


@pytest.mark.anyio
async def test_the_service_runs_the_preflight_whoever_builds_it(tmp_path: Path) -> None:
    # In-process, as the demo and the plugin author's fixture build a daemon: the
    # preflight is part of the service's own start, not only of `wsroute run`.
    from wsroute.config import loads
    from wsroute.service import Service, plan

    out = tmp_path / "missing" / "out.jsonl"
    config = loads(f'[handlers.out]\nplugin = "jsonl"\npath = "{out}"\n', path="wsroute.toml")
    service = Service(plan(config))
    with pytest.raises(ConfigError, match=r"handlers\.out\.path: the folder .* does not exist"):
        await service.run()
    assert service.runners == {}  # refused before anything was built or started
