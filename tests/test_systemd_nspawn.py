"""The shipped unit under a real systemd, booted from the host's own tree with systemd-nspawn.

The container sees the host's ``/usr`` (read-only), a writable overlay of
``/etc`` and a fresh tmpfs for the rest (``--volatile=yes``); its network is
its own loopback, so nothing can be downloaded in it. wsroute is installed
the way systemd/README.md says, by ``systemd/install-service`` from a
wheelhouse (``tests/wheelhouse.py`` makes the one ``make wheelhouse`` would,
without network access): a venv of the distribution's ``/usr/bin/python3`` at
``/opt/wsroute-VERSION``, ``/opt/wsroute`` pointing at it, the production
config and the units in ``/etc``. Then the documented steps: fill in the
config, check it, ``systemctl enable --now``, ``wsroute status`` on the API
socket, reload, add a credential with the shipped drop-in, stop.

Runs as root only (CI: ``.ci/run``); skips with the reason elsewhere, and
fails instead under CI (``need``/``unavailable`` in tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from conftest import need, unavailable
from systemd_helpers import PROBES, UPSTREAM_CODE, reference_config, wait_for
from wheelhouse import build_wheelhouse, next_wheelhouse

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD_DIR = ROOT / "systemd"
NSPAWN = shutil.which("systemd-nspawn")
NSENTER = shutil.which("nsenter")
SYSTEM_PYTHON = Path("/usr/bin/python3")
PROPAGATE = Path("/run/systemd/nspawn/propagate")  # on the host, one folder per container
# Inside the container.
OPT = "/opt/wsroute"
SOURCE = "/srv/wsroute"  # what the operator copied to the server: the checkout's
# systemd/ and config/ folders, and dist/wheelhouse
UNIT = "wsroute.service"
NEXT = "99.0.0"  # the version number of the upgrade's wheelhouse
STATE = "/var/lib/private/wsroute"  # StateDirectory= of a DynamicUser= unit
# sd-messages.h: "Main process exited, code=..., status=...", "Deactivated
# successfully", "Failed with result '...'".
MESSAGE_PROCESS_EXIT = "98e322203f7a4ed290d09fe03c09fe15"
MESSAGE_UNIT_SUCCESS = "7ad2d189f7e94e70a38c781354912448"
MESSAGE_UNIT_RESULT = "d9b373ed55a64feb8242e02dbe79a49c"
# What the operator adds to the production config for this upstream (the
# reference protocol): its codec, the login and the subscribe.
OPERATOR_TABLES = """
[[connections.exchange.on_connect]]
json = { role = "admin", user_id = "container-test" }
[[connections.exchange.on_connect]]
struct = { format = "<i", values = [2] }
json = ["first"]

[codecs.exchange]
type = "struct"
header = "<i"
fields = ["opcode"]

"""
CREDENTIAL_HEADER = 'headers = { Authorization = "Bearer ${credential:exchange-token}" }'
CONTAINER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0"}


def _version_of(python: Path) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out[0]), int(out[1])


def _why_not() -> str | None:
    """Why a container cannot run here, or None (root and systemd-nspawn: ``need``)."""
    if NSENTER is None:
        return "nsenter is not installed (package util-linux)"
    if not SYSTEM_PYTHON.exists():
        return (
            f"{SYSTEM_PYTHON} is missing: the container sees only the host's /usr, "
            "so the unit needs the distribution's python3 (package python3)"
        )
    ours = sys.version_info[:2]
    theirs = _version_of(SYSTEM_PYTHON)
    if theirs != ours:
        return (
            f"{SYSTEM_PYTHON} is Python {theirs}, the test environment's dependencies are "
            f"for {ours[0]}.{ours[1]}: the container could not import them"
        )
    return None


def build_source(folder: Path) -> Path:
    """What the operator brings to the server: ``systemd/``, ``config/`` and
    ``dist/wheelhouse`` of the checkout (mounted read-only at ``SOURCE``)."""
    source = folder / "source"
    for name in ("systemd", "config"):
        shutil.copytree(ROOT / name, source / name)
    (source / "dist").mkdir()
    house = shutil.move(build_wheelhouse(folder), source / "dist" / "wheelhouse")
    # The next release's wheelhouse, for the upgrade and the rollback.
    shutil.move(next_wheelhouse(Path(house), folder, NEXT), source / "dist" / f"wheelhouse-{NEXT}")
    return source


class Container:
    """``systemd-nspawn -b`` of the host tree; ``run()`` executes inside with nsenter."""

    def __init__(self, folder: Path, binds: Sequence[tuple[Path, str]]) -> None:
        assert NSPAWN is not None
        self.boot_log = folder / "boot.log"
        self.name = f"wsroute-test-{os.getpid()}"
        command = [
            NSPAWN,
            "--directory=/",
            "--volatile=yes",
            "--overlay=/etc::/etc",
            *(f"--bind-ro={source}:{target}" for source, target in binds),
            "--register=no",
            "--keep-unit",
            "--private-network",
            f"--machine={self.name}",
            "--boot",
            "systemd.unit=basic.target",
        ]
        with open(self.boot_log, "wb") as log:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.init = 0

    def boot_log_tail(self) -> str:
        lines = self.boot_log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-15:])

    def _children(self) -> dict[int, str]:
        """The nspawn process's children by PID, with their names: the container's
        PID 1 once it has executed systemd, nspawn's own helper before that."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                comm, rest = stat.split("(", 1)[1].rsplit(")", 1)
                if int(rest.split()[1]) == self.proc.pid:
                    found[int(entry.name)] = comm
        return found

    def _find_init(self) -> int:
        return next((pid for pid, comm in self._children().items() if comm == "systemd"), 0)

    def boot(self, timeout: float) -> str | None:
        """Wait for the container's systemd to finish booting; the reason if it did not."""
        deadline = time.monotonic() + timeout
        while not self.init:
            if self.proc.poll() is not None:
                return f"systemd-nspawn exited with {self.proc.returncode}"
            if time.monotonic() > deadline:
                return "the container's init did not appear"
            self.init = self._find_init()
            if not self.init:
                time.sleep(0.05)
        # Until the manager listens, systemctl fails at once ("offline", or nothing):
        # ask again; "--wait" then blocks while it is "initializing" or "starting".
        state = ""
        while time.monotonic() < deadline:
            try:
                result = self.run(
                    "systemctl",
                    "is-system-running",
                    "--wait",
                    check=False,
                    timeout=max(1.0, deadline - time.monotonic()),
                )
            except subprocess.TimeoutExpired:
                break
            state = (result.stdout.strip() or result.stderr.strip())[-200:]
            # "degraded": a unit of the host tree failed in the container; ours may still run.
            if state in ("running", "degraded"):
                return None
            if self.proc.poll() is not None:
                return f"systemd-nspawn exited with {self.proc.returncode}"
            time.sleep(0.1)
        return f"the container's systemd did not finish booting (last state: {state!r})"

    @property
    def root(self) -> Path:
        """The container's file system, seen from the host."""
        return Path(f"/proc/{self.init}/root")

    def run(
        self, *args: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        assert NSENTER is not None
        result = subprocess.run(
            [NSENTER, f"--target={self.init}", "--all", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=CONTAINER_ENV,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def manager_records(self, unit: str, message_id: str) -> list[dict[str, str]]:
        """Structured journal records of the container's systemd about ``unit``."""
        out = self.run(
            "journalctl", "--output=json", "--no-pager", "_PID=1", f"MESSAGE_ID={message_id}"
        ).stdout
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [r for r in records if r.get("UNIT") == unit]

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--unit", unit, "--output=cat", "--no-pager").stdout

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def stop(self) -> None:
        """Power the container off (SIGTERM to nspawn); kill it if that takes too long."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # Killing nspawn alone leaves the container running: kill its PID 1,
                # whose end takes the whole PID namespace along.
                for pid in {self.init, *self._children()} - {0}:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(timeout=20)
                # What nspawn removes itself when it is not killed.
                with contextlib.suppress(OSError):
                    (PROPAGATE / self.name).rmdir()


@contextlib.contextmanager
def container(folder: Path, binds: Sequence[tuple[Path, str]]) -> Iterator[Container]:
    box = Container(folder, binds)
    try:
        reason = box.boot(timeout=25)
        if reason:
            unavailable(
                "systemd-nspawn", f"no container: {reason}; boot.log:\n{box.boot_log_tail()}"
            )
        yield box
    finally:
        box.stop()
    if box.init:
        assert not Path(f"/proc/{box.init}").exists(), "the container's init outlived it"


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@need("systemd-nspawn")
@pytest.mark.timeout(300)  # the operator's whole first day, an upgrade and a rollback
def test_the_shipped_unit_under_a_real_systemd(tmp_path: Path) -> None:
    reason = _why_not()
    if reason:
        unavailable("systemd-nspawn", reason)
    source = build_source(tmp_path)
    with container(tmp_path, [(source, SOURCE)]) as box:
        # The documented install, in the container, which has no network.
        installed = box.run(f"{SOURCE}/systemd/install-service", timeout=240)
        assert "installed wsroute " in installed.stdout, installed.stdout
        version = installed.stdout.split("installed wsroute ", 1)[1].split(";")[0]
        assert box.run("readlink", OPT).stdout.strip() == f"/opt/wsroute-{version}"
        for name in ("wsroute.service", "wsroute@.service"):
            shipped = (SYSTEMD_DIR / name).read_text()
            assert (box.root / "etc/systemd/system" / name).read_text() == shipped
        installed = (box.root / "etc/wsroute/wsroute.toml").read_text()
        assert installed == (ROOT / "config/wsroute.production.toml").read_text()
        assert (box.root / "etc/wsroute/credentials").is_dir()

        # The upstream runs in the container too: its network is its own loopback.
        box.run(
            "systemd-run",
            "--unit=upstream",
            "--quiet",
            f"{OPT}/bin/python3",
            "-c",
            UPSTREAM_CODE,
            "0.05",
            "/run/upstream.url",
            "/run/upstream.count",
            "150",
        )
        url_file, count_file = box.root / "run/upstream.url", box.root / "run/upstream.count"
        url = wait_for(lambda: url_file.exists() and url_file.read_text(), 20, "the upstream")

        def upstream_connections() -> int:
            return int(count_file.read_text())

        # `check` on the installed config warns about the placeholder host (exit 0).
        placeholder = box.run(f"{OPT}/bin/wsroute", "check", "-c", "/etc/wsroute/wsroute.toml")
        assert "connections.exchange.url: ws.example.com is a placeholder" in placeholder.stdout

        # The operator fills in the production config for the upstream, checks it
        # as install-service's hint says, and starts the unit: no secret is needed.
        placeholder_url = r'^url = "wss://ws\.example\.com[^"]*"'
        config, found = re.subn(placeholder_url, f'url = "{url}"', installed, count=1, flags=re.M)
        assert found == 1
        config = config.replace('codec = "json"', 'codec = "exchange"', 1)
        config = config.replace("[routes.everything]", OPERATOR_TABLES + "[routes.everything]", 1)
        # Ticks and replies are archived; the upstream's text frames ("welcome",
        # "news") are unmatched and so kept in the dead letters.
        config = config.replace(
            'connection = "exchange"\n', 'connection = "exchange"\nkey = [1, 2]\n', 1
        )
        box.write("/etc/wsroute/wsroute.toml", config)
        checked = box.run(
            f"{OPT}/bin/wsroute",
            *("check", "-c", "/etc/wsroute/wsroute.toml"),
            *("--credentials-dir", "/etc/wsroute/credentials"),
        )
        assert "placeholder" not in checked.stdout, checked.stdout
        box.run("systemctl", "enable", "--now", UNIT)
        started = box.show(UNIT, "ActiveState", "SubState", "StatusText", "MainPID")
        assert started["ActiveState"] == "active", started
        assert "connected" in started["StatusText"], started
        archive = box.root / STATE.lstrip("/") / "archive.jsonl"
        wait_for(lambda: _lines(archive) >= 5, 20, "ticks archived by the sandboxed daemon")
        assert upstream_connections() == 1
        # The production config's API is on the runtime socket: `wsroute status` finds it.
        shown = box.run(f"{OPT}/bin/wsroute", "status", "-c", "/etc/wsroute/wsroute.toml")
        assert re.search(r"^exchange\s+connected\b", shown.stdout, re.M), shown.stdout

        # Under journald `log_format = "auto"` writes native entries: each key a field.
        entries = [
            json.loads(line)
            for line in box.run(
                "journalctl", "--unit", UNIT, "--output=json", "--no-pager", "CONNECTION=exchange"
            ).stdout.splitlines()
            if line.strip()
        ]
        connected = [e for e in entries if e.get("EVENT") == "connected"]
        assert connected, entries
        assert connected[0]["MESSAGE"].startswith("connected connection=exchange "), connected[0]
        assert connected[0]["PRIORITY"] == "6"
        assert connected[0]["SYSLOG_IDENTIFIER"] == "wsroute"
        assert connected[0]["CONNECTION"] == "exchange"

        # Reload (SIGHUP): RELOADING=1 ... READY=1, the same process, the same connection.
        box.run("systemctl", "reload", UNIT)
        wait_for(lambda: "reload_applied" in box.journal(UNIT), 20, "reload_applied")
        wait_for(
            lambda: box.show(UNIT, "ActiveState")["ActiveState"] == "active", 20, "active again"
        )
        assert box.show(UNIT, "MainPID")["MainPID"] == started["MainPID"]
        assert upstream_connections() == 1

        # A reload with an invalid file keeps the old config running and says so.
        box.write("/etc/wsroute/wsroute.toml", config.replace('plugin = "jsonl"', "plugin = 7", 1))
        box.run("systemctl", "reload", UNIT)
        wait_for(lambda: "reload_failed" in box.journal(UNIT), 20, "reload_failed")
        # (StatusText says "reload failed; ..." only until the next periodic status
        # update: see test_systemd_notify.py::test_the_status_line_keeps_saying_the_reload_failed.)
        after_reload = box.show(UNIT, "ActiveState", "MainPID")
        assert after_reload == {"ActiveState": "active", "MainPID": started["MainPID"]}
        archived = _lines(archive)
        wait_for(lambda: _lines(archive) > archived, 20, "ticks archived after the failed reload")
        assert upstream_connections() == 1

        # A token, as systemd/README.md says: the shipped drop-in, the credential
        # file, and the config's header line uncommented; then a restart.
        box.run(
            "install",
            "-D",
            "-m",
            "644",
            f"{SOURCE}/systemd/credentials.conf",
            f"/etc/systemd/system/{UNIT}.d/credentials.conf",
        )
        box.run("install", "-d", "-m", "700", "/etc/wsroute/credentials")
        box.write("/etc/wsroute/credentials/exchange-token", "token-for-the-test\n", 0o600)
        header = '# headers = { Authorization = "Bearer ${credential:exchange-token}" }'
        assert config.count(header) == 1
        config = config.replace(header, header.removeprefix("# "))
        box.write("/etc/wsroute/wsroute.toml", config)
        box.run("systemctl", "daemon-reload")
        box.run("systemctl", "restart", UNIT, timeout=40)
        restarted = box.show(UNIT, "ActiveState", "MainPID")
        assert restarted["ActiveState"] == "active", restarted
        assert restarted["MainPID"] != started["MainPID"]
        wait_for(lambda: upstream_connections() == 2, 20, "the reconnect with the token")
        assert "token-for-the-test" not in box.journal(UNIT)

        # Upgrade with the next release's wheelhouse, then roll back to this one,
        # as systemd/README.md says: the config and /var/lib/wsroute are kept, the
        # archive and the dead letters only grow, each switch is one restart.
        dead_letters = box.root / STATE.lstrip("/") / "dead-letters.jsonl"
        wait_for(lambda: _lines(dead_letters) >= 2, 20, "unmatched frames dead-lettered")
        for house, expected in ((f"wheelhouse-{NEXT}", NEXT), ("wheelhouse", version)):
            kept = (_lines(archive), _lines(dead_letters))
            connections = upstream_connections()
            pid = box.show(UNIT, "MainPID")["MainPID"]
            switched = box.run(f"{SOURCE}/systemd/install-service", f"{SOURCE}/dist/{house}")
            assert f"installed wsroute {expected};" in switched.stdout, switched.stdout
            assert "/etc/wsroute/wsroute.toml exists: left as it is" in switched.stdout
            assert box.run("readlink", OPT).stdout.strip() == f"/opt/wsroute-{expected}"
            box.run("systemctl", "restart", UNIT, timeout=40)
            now = box.show(UNIT, "ActiveState", "MainPID")
            assert now["ActiveState"] == "active", now
            assert now["MainPID"] != pid
            shown = box.run(f"{OPT}/bin/wsroute", "--version").stdout.strip()
            assert shown == f"wsroute {expected}"
            assert (box.root / "etc/wsroute/wsroute.toml").read_text() == config
            assert _lines(archive) >= kept[0]
            assert _lines(dead_letters) >= kept[1]
            wait_for(lambda c=connections: upstream_connections() > c, 20, "the new session")
            wait_for(lambda k=kept: _lines(archive) > k[0], 20, "ticks archived after the switch")
            wait_for(lambda k=kept: _lines(dead_letters) > k[1], 20, "the welcome dead-lettered")
        assert "delivery_unbalanced" not in box.journal(UNIT)

        # Stop: SIGTERM, drain, exit 0; systemd records a clean result. A unit that
        # stopped cleanly is unloaded at once (its `systemctl show` is all defaults),
        # so systemd's own journal records are the evidence: the exit status is
        # logged at debug level when it is a success.
        successes_before = len(box.manager_records(UNIT, MESSAGE_UNIT_SUCCESS))
        box.run("systemctl", "log-level", "debug")
        box.run("systemctl", "stop", UNIT, timeout=40)
        box.run("systemctl", "log-level", "info")
        assert box.show(UNIT, "ActiveState") == {"ActiveState": "inactive"}
        exits = box.manager_records(UNIT, MESSAGE_PROCESS_EXIT)
        main_exit = [r for r in exits if r.get("COMMAND") == "ExecStart"]
        assert [(r["EXIT_CODE"], r["EXIT_STATUS"]) for r in main_exit] == [("exited", "0")]
        successes = len(box.manager_records(UNIT, MESSAGE_UNIT_SUCCESS))
        assert successes == successes_before + 1  # Result=success
        assert box.manager_records(UNIT, MESSAGE_UNIT_RESULT) == []  # no "Failed with result"
        journal = box.journal(UNIT)
        assert "shutdown_complete" in journal
        assert "delivery_unbalanced" not in journal

        # A bad config: exit 78 before READY=1, the start fails, no restart loop.
        box.write("/etc/wsroute/wsroute.toml", config.replace('plugin = "jsonl"', "plugin = 7", 1))
        start = box.run("systemctl", "start", UNIT, check=False)
        assert start.returncode != 0
        failed = box.show(UNIT, "ActiveState", "Result", "ExecMainStatus", "RestartUSec")
        assert failed["ActiveState"] == "failed", failed
        assert failed["Result"] == "exit-code", failed
        assert failed["ExecMainStatus"] == "78", failed
        # Past RestartSec= (5 s), Restart=on-failure would have started it again.
        restart_after = _seconds(failed["RestartUSec"])
        time.sleep(restart_after + 1.5)
        later = box.show(UNIT, "ActiveState", "NRestarts")
        assert later == {"ActiveState": "failed", "NRestarts": "0"}
        assert "handlers.archive.plugin" in box.journal(UNIT)

        # The template, and the watchdog: an instance whose handler blocks the event
        # loop once (a marker in its state directory survives the restart). A
        # runtime drop-in shortens WatchdogSec= and RestartSec= for the test.
        instance = "wsroute@wd.service"
        box.write(
            f"/run/systemd/system/{instance}.d/test.conf",
            "[Service]\nWatchdogSec=3\nRestartSec=1\n",
        )
        box.write("/etc/wsroute/plugins/probes.py", PROBES)
        (box.root / "etc/wsroute/plugins").chmod(0o755)
        blocker = """
[handlers.blocker]
plugin = "probes:Blocker"
timeout = "120s"
sleep = "60s"
skip = 20
once_file = "${STATE_DIRECTORY}/blocked-once"
"""
        box.write(
            "/etc/wsroute/wd.toml",
            reference_config(
                url,
                "${STATE_DIRECTORY}",
                tick_handlers=["archive", "blocker"],
                connection_extra=CREDENTIAL_HEADER,
                daemon_extra='plugin_paths = ["/etc/wsroute/plugins"]',
                handlers_extra=blocker,
            ),
        )
        box.run(
            "install",
            "-D",
            "-m",
            "644",
            f"{SOURCE}/systemd/credentials@.conf",
            "/etc/systemd/system/wsroute@.service.d/credentials.conf",
        )
        box.run("install", "-d", "-m", "700", "/etc/wsroute/credentials/wd")
        box.write("/etc/wsroute/credentials/wd/exchange-token", "token-for-wd\n", 0o600)
        box.run("systemctl", "daemon-reload")
        box.run("systemctl", "start", instance)
        first_pid = box.show(instance, "MainPID")["MainPID"]

        def watchdog_results() -> list[str]:
            return [
                r.get("UNIT_RESULT", "") for r in box.manager_records(instance, MESSAGE_UNIT_RESULT)
            ]

        wait_for(lambda: "watchdog" in watchdog_results(), 30, "the watchdog to fire")
        wait_for(
            lambda: (
                box.show(instance, "ActiveState", "NRestarts")
                == {"ActiveState": "active", "NRestarts": "1"}
            ),
            30,
            "the restart after the watchdog kill",
        )
        assert box.show(instance, "MainPID")["MainPID"] != first_pid
        journal = box.journal(instance)
        # PYTHONFAULTHANDLER=1: SIGABRT put the blocked Python stack into the journal.
        assert "Fatal Python error: Aborted" in journal
        assert 'File "/etc/wsroute/plugins/probes.py", line' in journal
        assert "Failed with result 'watchdog'" in journal
        archive_wd = box.root / "var/lib/private/wsroute-wd/archive.jsonl"
        archived = _lines(archive_wd)
        wait_for(lambda: _lines(archive_wd) > archived, 20, "ticks archived after the restart")
        box.run("systemctl", "stop", instance, timeout=40)
        assert len(box.manager_records(instance, MESSAGE_UNIT_SUCCESS)) == 1
        assert watchdog_results() == ["watchdog"]


def _seconds(span: str) -> float:
    """``systemctl show`` time spans: ``5s``, ``100ms``, ``1min 30s``."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
    total = 0.0
    for part in span.split():
        number = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        total += float(number) * units[part[len(number) :]]
    return total
