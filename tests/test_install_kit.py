"""The operator's install kit: the production config, placeholder hosts, credentials
outside systemd, and a wheelhouse refused by a server it does not fit.

Real subprocesses of ``wsroute`` and ``systemd/install-service``; an encrypted
credential made by the real ``systemd-creds`` where it is installed (CI installs
systemd: a missing one fails there instead of skipping).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wsroute.config.lint import is_placeholder_host

from conftest import REPO

WSROUTE = str(Path(sys.executable).with_name("wsroute"))
INSTALL = str(REPO / "systemd" / "install-service")
PRODUCTION = REPO / "config" / "wsroute.production.toml"
SYSTEM_PYTHON = Path("/usr/bin/python3")
HEADER = '# headers = { Authorization = "Bearer ${credential:exchange-token}" }'


def wsroute(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run(
        [WSROUTE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **(env or {})},
        check=False,
    )


def production(tmp_path: Path, *, url: str = "", token: bool = False) -> Path:
    text = PRODUCTION.read_text().replace("/var/lib/wsroute", str(tmp_path))
    text = text.replace('["unix:/run/wsroute/api.sock"]', f'["unix:{tmp_path}/api.sock"]')
    if url:
        text = text.replace('url = "wss://ws.example.com/"', f'url = "{url}"')
    if token:
        assert text.count(HEADER) == 1
        text = text.replace(HEADER, HEADER.removeprefix("# "))
    path = tmp_path / "wsroute.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("host", "placeholder"),
    [
        ("example.com", True),
        ("ws.example.com", True),
        ("WS.Example.ORG.", True),
        ("feed.example.net", True),
        ("upstream.invalid", True),
        ("exchange.example", True),
        ("example.company.com", False),
        ("myexample.com", False),
        ("example.com.evil.io", False),
        ("127.0.0.1", False),
        ("invalidation.io", False),
    ],
)
def test_placeholder_hosts_are_told_from_the_name_alone(host: str, placeholder: bool) -> None:
    assert is_placeholder_host(host) is placeholder


def test_the_production_config_checks_with_one_warning_until_filled_in(tmp_path: Path) -> None:
    shipped = wsroute("check", "-c", str(production(tmp_path)))
    assert shipped.returncode == 0, shipped.stderr
    warnings = [line for line in shipped.stdout.splitlines() if "placeholder" in line]
    assert warnings == [
        "warning: connections.exchange.url: ws.example.com is a placeholder (a domain kept "
        "for examples): set the real host (line 32)"
    ]
    assert "printer" not in PRODUCTION.read_text()  # nothing printed per message
    filled = wsroute("check", "-c", str(production(tmp_path, url="wss://feed.acme.test:9443/")))
    assert filled.returncode == 0, filled.stderr
    assert "placeholder" not in filled.stdout
    assert "everything: exchange / any key -> archive" in filled.stdout


def test_the_production_config_checks_before_systemd_made_its_folders(tmp_path: Path) -> None:
    """As installed: /var/lib/wsroute and /run/wsroute are made by the unit at start
    (StateDirectory=, RuntimeDirectory=), so their absence is no problem for check;
    another missing socket folder is."""
    if Path("/run/wsroute").exists():
        pytest.skip("/run/wsroute exists here: the daemon may be running")
    shipped = PRODUCTION.read_text().replace(
        'url = "wss://ws.example.com/"', 'url = "wss://feed.acme.test/"'
    )
    config = tmp_path / "wsroute.toml"
    config.write_text(shipped)
    result = wsroute("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    config.write_text(shipped.replace("unix:/run/wsroute/", f"unix:{tmp_path}/nowhere/"))
    refused = wsroute("check", "-c", str(config))
    assert refused.returncode == 78
    assert f"its folder {tmp_path}/nowhere: No such file or directory" in refused.stderr


def test_a_placeholder_in_a_sink_url_is_warned_about_too(tmp_path: Path) -> None:
    config = production(tmp_path, url="wss://feed.acme.test/")
    config.write_text(
        config.read_text()
        + '\n[handlers.hook]\nplugin = "webhook"\nurl = "https://hooks.example.org/in"\n'
        + '[routes.hook]\nhandlers = ["hook"]\n'
    )
    result = wsroute("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "handlers.hook.url: hooks.example.org is a placeholder" in result.stdout


def test_check_reads_credentials_from_the_credentials_dir(tmp_path: Path) -> None:
    config = production(tmp_path, url="wss://feed.acme.test/", token=True)
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "exchange-token").write_text("s3cret-token\n")

    missing = wsroute("check", "-c", str(config), "--credentials-dir", str(tmp_path / "none"))
    assert missing.returncode == 78
    assert "is not a directory" in missing.stderr

    found = wsroute("check", "-c", str(config), "--credentials-dir", str(creds))
    assert found.returncode == 0, found.stderr
    assert "s3cret-token" not in found.stdout + found.stderr

    # Without the flag: $CREDENTIALS_DIRECTORY (a check run under systemd) is used.
    by_env = wsroute("check", "-c", str(config), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert by_env.returncode == 0, by_env.stderr

    # `wsroute test` takes the same flag.
    tests = tmp_path / "tests.toml"
    tests.write_text(
        '[[tests]]\nname = "a tick"\nconnection = "exchange"\n'
        'frame = { json = { type = "tick" } }\n'
        'expect = { key = "tick", handlers = ["archive"] }\n'
    )
    tested = wsroute("test", "-c", str(config), str(tests), "--credentials-dir", str(creds))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_without_a_credentials_dir_check_says_how_to_give_one(tmp_path: Path) -> None:
    if Path("/etc/wsroute/credentials").is_dir():
        pytest.skip("this machine has /etc/wsroute/credentials: the default would be used")
    config = production(tmp_path, url="wss://feed.acme.test/", token=True)
    result = wsroute("check", "-c", str(config))
    assert result.returncode == 78
    assert "--credentials-dir DIR" in result.stderr


def test_an_encrypted_credential_is_named_as_such(tmp_path: Path) -> None:
    creds_tool = shutil.which("systemd-creds")
    if creds_tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-creds missing in CI: .ci/systemd-setup installs systemd")
        pytest.skip("systemd-creds not installed")
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    made = subprocess.run(
        [
            creds_tool,
            "encrypt",
            "--name=exchange-token",
            "--with-key=tpm2-absent",
            "-",
            "exchange-token",
        ],
        input="s3cret-token",
        capture_output=True,
        text=True,
        timeout=30,
        cwd=creds,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    config = production(tmp_path, url="wss://feed.acme.test/", token=True)
    result = wsroute("check", "-c", str(config), "--credentials-dir", str(creds))
    assert result.returncode == 78
    assert 'credential "exchange-token"' in result.stderr
    assert "is encrypted (systemd-creds)" in result.stderr
    assert "LoadCredentialEncrypted=exchange-token:" in result.stderr
    assert "cannot read" not in result.stderr


def test_install_service_prints_the_target_it_compares() -> None:
    done = subprocess.run(
        [INSTALL, "--print-target", sys.executable],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    v = sys.version_info
    assert done.stdout.startswith(f"python={v.major}.{v.minor} implementation=cpython platform=")
    assert done.stdout.count("\n") == 1


def test_a_wheelhouse_for_another_python_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("install-service runs as root only (CI runs as root)")
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} is missing (the script's default interpreter)")
    house = tmp_path / "wheelhouse"
    house.mkdir()
    # Never installed: the refusal comes first. The name is what install-service looks for.
    (house / "wsroute-99.0.0-py3-none-any.whl").write_bytes(b"")
    (house / "BUILT-FOR").write_text("python=3.12 implementation=cpython platform=linux-x86_64\n")
    result = subprocess.run(
        [INSTALL, str(house)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHON": str(SYSTEM_PYTHON)},
        check=False,
    )
    assert result.returncode == 69, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "was built for python=3.12 implementation=cpython" in lines[0]
    assert "rebuild it with Python 3." in lines[0]
    assert result.stdout == ""
    assert not Path("/opt/wsroute-99.0.0").exists()
