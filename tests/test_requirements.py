"""A dependency at a version wsroute does not run on: ``wsroute check`` and ``run`` say so in
one line and exit 78, instead of a traceback from deep inside an import.

The old versions are real packages on ``PYTHONPATH`` ahead of the venv: a ``websockets``
13.0 (its metadata, and a module without the API wsroute imports, as that release
lacks it) shadows the installed one, as a stale copy on the path would.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wsroute.requirements import problems

from conftest import REPO

WSROUTE = Path(sys.executable).with_name("wsroute")


def _shadow(folder: Path, name: str, version: str, module: str | None = None) -> None:
    """A distribution ``name`` at ``version`` in ``folder``, with an empty module."""
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text("")
    package = folder / (module or name)
    package.mkdir()
    (package / "__init__.py").write_text(f'__version__ = "{version}"\n')


def _needs(name: str) -> str:
    for requirement in importlib.metadata.requires("wsroute") or []:
        if requirement.split(";")[0].replace(" ", "").startswith(name):
            return requirement.split(";")[0].replace(" ", "")
    raise AssertionError(name)


def _wsroute(folder: Path, *args: str, script: bool = True) -> subprocess.CompletedProcess[str]:
    command = [str(WSROUTE)] if script else [sys.executable, "-m", "wsroute.cli"]
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("script", [True, False], ids=["wsroute", "python-m-wsroute.cli"])
def test_a_too_old_websockets_is_one_line_and_exit_78(
    tmp_path: Path, command: str, script: bool
) -> None:
    _shadow(tmp_path, "websockets", "13.0")
    result = _wsroute(tmp_path, command, "-c", str(REPO / "config" / "demo.toml"), script=script)
    assert result.returncode == 78, result
    assert result.stderr.splitlines() == [
        f"wsroute: websockets 13.0 is installed; wsroute needs {_needs('websockets')}"
    ]
    assert result.stdout == ""


def test_an_extras_package_is_checked_when_installed(tmp_path: Path) -> None:
    _shadow(tmp_path, "redis", "4.6.0")
    result = _wsroute(tmp_path, "check", "-c", str(REPO / "config" / "demo.toml"))
    assert result.returncode == 78, result
    assert result.stderr.splitlines() == [
        f"wsroute: redis 4.6.0 is installed; wsroute[redis] needs {_needs('redis')}"
    ]


def test_the_installed_versions_satisfy_every_requirement() -> None:
    # This venv was installed from pyproject.toml: nothing to report.
    assert problems() == []
