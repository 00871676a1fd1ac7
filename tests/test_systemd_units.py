"""The shipped unit files: what systemd itself says about them, and what they promise.

``systemd-analyze`` works without systemd running as PID 1: ``verify`` loads
the units as the manager would (exit 0 even with warnings, so stderr must be
empty) and ``security --offline=yes`` scores their sandboxing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from wsroute.config import DaemonSection

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
SHIPPED_EXEC = "/opt/wsroute/bin/wsroute"
UNITS = {"wsroute.service": "wsroute.service", "wsroute@.service": "wsroute@demo.service"}
# Exposure 2.0 at most (systemd-analyze counts in tenths); the units score about 1.1.
SECURITY_THRESHOLD = 20
# Keys the notify-reload drop-in needs and systemd < 253 does not know.
NOTIFY_RELOAD_MIN_VERSION = 253

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (run .ci/systemd-setup as root)"
)


def _settings(text: str) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` in file order; repeated keys stay repeated."""
    out: list[tuple[str, str, str]] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _values(text: str, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in _settings(text) if s == section and k == key]


def _one(text: str, key: str, section: str = "Service") -> str:
    values = _values(text, key, section)
    assert len(values) == 1, f"{section}.{key}: expected one value, got {values}"
    return values[0]


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min)?", value)
    assert match, f"not a simple time span: {value!r}"
    scale = {"ms": 0.001, "s": 1.0, None: 1.0, "min": 60.0}[match.group(2)]
    return float(match.group(1)) * scale


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    # A SYSTEMD_LOG_LEVEL=debug in the caller's environment would fill stderr.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_LOG_")}
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, env=env, timeout=50, check=False
    )


def _systemd_version() -> int:
    out = _analyze("--version").stdout
    match = re.match(r"systemd (\d+)", out)
    assert match, f"unexpected systemd-analyze --version output: {out!r}"
    return int(match.group(1))


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The units copied under the names systemd will load them by.

    ``verify`` insists that ExecStart= names an existing executable. Where
    wsroute is not installed at its shipped path, a stand-in script takes its
    place; nothing else in the files changes.
    """
    exec_path = SHIPPED_EXEC
    if not os.access(SHIPPED_EXEC, os.X_OK):
        fake = tmp_path / "opt" / "wsroute" / "bin" / "wsroute"
        fake.parent.mkdir(parents=True)
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(0o755)
        exec_path = str(fake)
    units = tmp_path / "units"
    units.mkdir()
    for source, target in UNITS.items():
        text = (SYSTEMD_DIR / source).read_text()
        (units / target).write_text(text.replace(SHIPPED_EXEC, exec_path))
    return units


@needs_analyze
@pytest.mark.parametrize("unit", UNITS.values())
def test_verify_is_clean(unit_dir: Path, unit: str) -> None:
    result = _analyze("verify", "--man=no", str(unit_dir / unit))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_analyze
@pytest.mark.parametrize("unit", UNITS.values())
def test_security_exposure_below_threshold(unit_dir: Path, unit: str) -> None:
    result = _analyze(
        "security", "--offline=yes", f"--threshold={SECURITY_THRESHOLD}", str(unit_dir / unit)
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert result.returncode == 0, f"exposure {match.group(1)}\n{result.stdout}"
    assert float(match.group(1)) <= SECURITY_THRESHOLD / 10


@needs_analyze
@pytest.mark.parametrize("unit", UNITS.values())
def test_notify_reload_drop_in(unit_dir: Path, unit: str) -> None:
    drop_in_dir = unit_dir / f"{unit}.d"
    drop_in_dir.mkdir()
    shutil.copy(SYSTEMD_DIR / "notify-reload.conf", drop_in_dir / "notify-reload.conf")
    result = _analyze("verify", "--man=no", str(unit_dir / unit))
    assert result.returncode == 0, result.stderr
    if _systemd_version() >= NOTIFY_RELOAD_MIN_VERSION:
        assert result.stderr == ""
        return
    # Older systemd loads the drop-in but does not know the new type; that, and
    # nothing else, is what it may complain about.
    lines = [line for line in result.stderr.splitlines() if line]
    assert lines
    for line in lines:
        assert "notify-reload.conf" in line, line
        assert "notify-reload" in line.split(":", 2)[-1], line


def test_drop_in_switches_type_and_clears_exec_reload() -> None:
    text = (SYSTEMD_DIR / "notify-reload.conf").read_text()
    assert _settings(text) == [("Service", "Type", "notify-reload"), ("Service", "ExecReload", "")]


@pytest.mark.parametrize("name", UNITS)
def test_unit_promises(name: str) -> None:
    text = (SYSTEMD_DIR / name).read_text()
    assert _one(text, "Type") == "notify"
    assert _one(text, "NotifyAccess") == "main"
    assert _one(text, "ExecStart").startswith(f"{SHIPPED_EXEC} run -c /etc/wsroute/")
    assert _one(text, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert _one(text, "Restart") == "on-failure"
    # 78: bad config or plugin (EX_CONFIG); 243: a credential file is missing.
    assert _one(text, "RestartPreventExitStatus").split() == ["78", "243"]
    assert _one(text, "KillMode") == "mixed"
    assert _one(text, "StartLimitBurst", "Unit")
    assert _one(text, "StartLimitIntervalSec", "Unit")
    assert "PYTHONFAULTHANDLER=1" in " ".join(_values(text, "Environment")).split()
    # The daemon pings every WatchdogSec/2 (15 s); the stop timeout leaves the
    # default drain budget room to finish before SIGKILL.
    assert _seconds(_one(text, "WatchdogSec")) == 30
    assert _seconds(_one(text, "TimeoutStopSec")) > DaemonSection().shutdown_timeout
    assert _one(text, "WantedBy", "Install") == "multi-user.target"


@pytest.mark.parametrize("name", UNITS)
def test_unit_hardening(name: str) -> None:
    text = (SYSTEMD_DIR / name).read_text()
    expected = {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "PrivateUsers": "yes",
        "ProtectProc": "invisible",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute": "yes",
        "ConfigurationDirectory": "wsroute",
    }
    for key, value in expected.items():
        assert _one(text, key) == value, key
    assert _values(text, "SystemCallFilter")[0] == "@system-service"


@pytest.mark.parametrize("name", UNITS)
def test_the_first_start_needs_no_secret(name: str) -> None:
    """A credential the unit loads must exist, or the start fails (243/CREDENTIALS):
    the shipped units load none; a drop-in adds the token (next tests)."""
    text = (SYSTEMD_DIR / name).read_text()
    assert _values(text, "LoadCredential") == []
    assert _values(text, "LoadCredentialEncrypted") == []


#: The drop-in for each unit, and where systemd/README.md installs it.
CREDENTIAL_DROP_INS = {
    "wsroute.service": ("credentials.conf", "/etc/wsroute/credentials/exchange-token"),
    "wsroute@.service": ("credentials@.conf", "/etc/wsroute/credentials/%i/exchange-token"),
}


@pytest.mark.parametrize("name", UNITS)
def test_credential_drop_in(name: str) -> None:
    drop_in, path = CREDENTIAL_DROP_INS[name]
    text = (SYSTEMD_DIR / drop_in).read_text()
    assert _settings(text) == [("Service", "LoadCredential", f"exchange-token:{path}")]
    # The command in its header comment is the one the docs show.
    command = f"install -D -m 644 systemd/{drop_in} /etc/systemd/system/{name}.d/credentials.conf"
    assert command in text
    assert command in (SYSTEMD_DIR / "README.md").read_text()


@needs_analyze
@pytest.mark.parametrize("name", UNITS)
def test_credential_drop_in_verifies(unit_dir: Path, name: str) -> None:
    unit = UNITS[name]
    drop_in_dir = unit_dir / f"{unit}.d"
    drop_in_dir.mkdir()
    shutil.copy(SYSTEMD_DIR / CREDENTIAL_DROP_INS[name][0], drop_in_dir / "credentials.conf")
    result = _analyze("verify", "--man=no", str(unit_dir / unit))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("name", UNITS)
def test_runtime_directory_holds_the_api_socket(name: str) -> None:
    """``[daemon.api]``'s Unix socket lives in the runtime directory the unit creates.

    The socket is 0660 (``socket_mode``); the directory lets the daemon's group
    in and nobody else, so the socket is reachable exactly by whom its mode says.
    """
    text = (SYSTEMD_DIR / name).read_text()
    runtime = _one(text, "RuntimeDirectory")
    assert runtime == ("wsroute-%i" if "@" in name else "wsroute")
    mode = int(_one(text, "RuntimeDirectoryMode"), 8)
    assert mode & 0o750 == 0o750, oct(mode)  # the owner writes, the group enters
    assert mode & 0o007 == 0, oct(mode)  # others cannot reach the socket


def test_documented_socket_paths_are_in_a_runtime_directory() -> None:
    """Every ``unix:/run/...`` the docs show is where a unit lets the daemon create it."""
    single = "/run/" + _one((SYSTEMD_DIR / "wsroute.service").read_text(), "RuntimeDirectory")
    template = _one((SYSTEMD_DIR / "wsroute@.service").read_text(), "RuntimeDirectory")
    instance = re.escape("/run/" + template).replace("%i", "[a-z0-9]+")
    root = SYSTEMD_DIR.parent
    for doc in (root / "docs" / "observability.md", SYSTEMD_DIR / "README.md"):
        paths = set(re.findall(r"unix:(/run/[\w./-]+)", doc.read_text()))
        assert paths, doc
        for path in paths:
            folder = os.path.dirname(path)
            assert folder == single or re.fullmatch(instance, folder), (doc.name, path)


def test_template_instances_are_separate() -> None:
    text = (SYSTEMD_DIR / "wsroute@.service").read_text()
    assert _one(text, "ExecStart").endswith(" -c /etc/wsroute/%i.toml")
    assert _one(text, "StateDirectory") == "wsroute-%i"
    assert _one(text, "RuntimeDirectory") == "wsroute-%i"
    assert _one(text, "WorkingDirectory") == "%S/wsroute-%i"
    assert _one(text, "SyslogIdentifier") == "wsroute-%i"
    assert _one(text, "User") == "wsroute-%i"


def test_template_differs_only_where_instances_differ() -> None:
    """Hardening or timeouts changed in one unit must change in the other too."""
    single = _settings((SYSTEMD_DIR / "wsroute.service").read_text())
    template = _settings((SYSTEMD_DIR / "wsroute@.service").read_text())
    per_instance = {"Description", "ExecStart", "SyslogIdentifier"} | {
        "StateDirectory",
        "RuntimeDirectory",
        "WorkingDirectory",
    }
    # Only the template needs User=: instances would otherwise share one dynamic user.
    template_only = {("Service", "User")}
    template = [s for s in template if s[:2] not in template_only]
    # The journal identifier is the instance's name, as SyslogIdentifier= is.
    ident = "WSROUTE_SYSLOG_IDENTIFIER="
    single = [s for s in single if not s[2].startswith(ident)]
    template = [s for s in template if not s[2].startswith(ident)]
    assert [s for s in single if s[1] not in per_instance] == [
        s for s in template if s[1] not in per_instance
    ]
    assert [s[:2] for s in single] == [s[:2] for s in template]


def _first_sh_block(text: str, heading: str) -> str:
    section = text.split(f"\n{heading}\n", 1)[1]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


def test_quickstart_and_systemd_readme_agree_line_by_line() -> None:
    """One install path: the README's Quickstart is systemd/README.md's Install."""
    root = SYSTEMD_DIR.parent
    quickstart = _first_sh_block((root / "README.md").read_text(), "## Quickstart")
    install = _first_sh_block((SYSTEMD_DIR / "README.md").read_text(), "## Install")
    assert quickstart == install
    # What the lines name exists: the make target, the script, the production config.
    assert "\nwheelhouse:" in (root / "Makefile").read_text()
    script = SYSTEMD_DIR / "install-service"
    assert os.access(script, os.X_OK)
    assert '"$root/config/wsroute.production.toml" /etc/wsroute/wsroute.toml' in script.read_text()


def test_install_script_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    """Checked before anything is written: no wheelhouse, a wheelhouse without wsroute."""
    script = str(SYSTEMD_DIR / "install-service")
    if os.geteuid() != 0:
        result = subprocess.run([script], capture_output=True, text=True, timeout=30)
        assert result.returncode == 64
        assert "run it as root" in result.stderr
        return
    missing = subprocess.run(
        [script, str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=30
    )
    assert missing.returncode == 69
    assert "make wheelhouse" in missing.stderr
    empty = subprocess.run([script, str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert empty.returncode == 69
    assert "no wsroute-*.whl" in empty.stderr
    usage = subprocess.run([script, "a", "b"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 64
