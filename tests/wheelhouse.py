"""The wheelhouse ``make wheelhouse`` builds, made without network access.

``make wheelhouse`` runs ``pip wheel '.[...]'``, which downloads every
dependency; a test may not. Here wsroute's own wheel is built from a copy of
the checkout (``--no-build-isolation``: the dev extra brings setuptools), and
each dependency is packed back into a wheel from the files this environment
installed for it, so ``systemd/install-service`` gets the same kind of folder
it gets in production: one ``.whl`` per distribution, installed with
``pip install --no-index --find-links``.
"""

from __future__ import annotations

import base64
import email.parser
import hashlib
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
#: What ``pip wheel`` needs of the checkout (pyproject names the rest).
SOURCES = ("pyproject.toml", "README.md", "daemon", "plugins")
#: Files pip writes at install time; a wheel does not carry them.
INSTALL_ONLY = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}


def build_wheelhouse(folder: Path) -> Path:
    """``folder/wheelhouse``: wsroute's wheel and one wheel per run-time dependency."""
    house = folder / "wheelhouse"
    house.mkdir(parents=True)
    _build_wsroute(folder / "wsroute-source", house, version=None)
    (wheel,) = house.glob("wsroute-*.whl")
    for dist in _dependencies(_requires(wheel)):
        repack(dist, house)
    # What `make wheelhouse` records: the interpreter the wheels are for.
    target = subprocess.run(
        [str(ROOT / "systemd" / "install-service"), "--print-target", sys.executable],
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
    ).stdout
    (house / "BUILT-FOR").write_text(target)
    return house


def next_wheelhouse(house: Path, folder: Path, version: str) -> Path:
    """``folder/wheelhouse-VERSION``: ``house`` with wsroute's wheel rebuilt as ``version``
    (the same code under a newer version number: an upgrade to install, and to roll back)."""
    newer = folder / f"wheelhouse-{version}"
    shutil.copytree(house, newer, ignore=shutil.ignore_patterns("wsroute-*.whl"))
    _build_wsroute(folder / f"wsroute-source-{version}", newer, version=version)
    return newer


def _build_wsroute(source: Path, house: Path, *, version: str | None) -> None:
    """wsroute's own wheel into ``house``, from a copy of the checkout's sources."""
    source.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=skip)
        else:
            shutil.copy2(path, source / name)
    if version is not None:
        init = source / "daemon" / "__init__.py"
        text, found = re.subn(
            r'^__version__ = ".*"$', f'__version__ = "{version}"', init.read_text(), flags=re.M
        )
        assert found == 1
        init.write_text(text)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"),
            *("--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(house)),
            str(source),
        ],
        check=True,
        timeout=180,
        capture_output=True,
    )


def _requires(wheel: Path) -> list[str]:
    """The wheel's own ``Requires-Dist`` (the editable install's may be older)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    return email.parser.Parser().parsestr(text).get_all("Requires-Dist") or []


def _dependencies(requires: list[str]) -> Iterator[metadata.Distribution]:
    """Every installed distribution these requirements need at run time (no extras)."""
    seen = {"wsroute"}
    todo = [requires]
    while todo:
        for line in todo.pop():
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            key = _canonical(requirement.name)
            if key not in seen:
                seen.add(key)
                dist = metadata.distribution(requirement.name)
                todo.append(dist.requires or [])
                yield dist


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def repack(dist: metadata.Distribution, house: Path) -> Path:
    """A wheel of an installed distribution, from the files its RECORD lists."""
    tags = [
        line.split(":", 1)[1].strip()
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    ]
    assert tags, f"{dist.metadata['Name']} was not installed from a wheel"
    files = [f for f in dist.files or [] if _belongs_in_a_wheel(f.parts)]
    info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    wheel = house / f"{name}-{dist.version}-{tags[0]}.whl"
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            data = Path(str(file.locate())).read_bytes()
            archive.writestr(file.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{file.as_posix()},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def _belongs_in_a_wheel(parts: tuple[str, ...]) -> bool:
    if parts[0] == ".." or "__pycache__" in parts:  # scripts pip generated; bytecode
        return False
    return not (parts[0].endswith(".dist-info") and parts[-1] in INSTALL_ONLY)
