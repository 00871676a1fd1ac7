"""What mypy tells an author: a misspelled keyword of ``wsroute.connect()``, the type
``build_handler`` returns. Runs mypy (the dev extra) on small programs.

mypy reads wsroute from a folder laid out like the installed package (as
``make typecheck`` does): this checkout's sources, whatever the venv's install mode.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
Mypy = Callable[[str], tuple[int, str]]


@pytest.fixture(scope="module")
def mypy(tmp_path_factory: pytest.TempPathFactory) -> Mypy:
    """Run ``mypy --strict`` on a program's text: (exit status, output)."""
    folder = tmp_path_factory.mktemp("mypy")
    package = folder / "site" / "wsroute"
    package.mkdir(parents=True)
    for path in (REPO / "daemon").iterdir():
        if path.suffix == ".py" or path.name == "py.typed" or (path / "__init__.py").exists():
            (package / path.name).symlink_to(path)
    (package / "plugins").symlink_to(REPO / "plugins")

    def run(program: str) -> tuple[int, str]:
        source = folder / "program.py"
        source.write_text(textwrap.dedent(program).lstrip())
        done = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(source)],
            env={**os.environ, "MYPYPATH": str(folder / "site")},
            cwd=REPO,  # the project's mypy settings and cache
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        return done.returncode, re.sub(r"^\S*program\.py:", "program.py:", done.stdout, flags=re.M)

    return run


def test_a_misspelled_keyword_of_connect_is_a_type_error(mypy: Mypy) -> None:
    status, output = mypy(
        """
        import wsroute
        import wsroute.sync

        client = wsroute.connect("ws://127.0.0.1:1/", ping_intervl=5, queue="many")
        sync_client = wsroute.sync.connect("ws://127.0.0.1:1/", reconect={})
        """
    )
    assert status == 1
    assert [line for line in output.splitlines() if ": error:" in line] == [
        'program.py:4: error: Unexpected keyword argument "ping_intervl" for "connect"; '
        'did you mean "ping_interval"?  [call-arg]',
        'program.py:4: error: Argument "queue" to "connect" has incompatible type "str"; '
        'expected "int"  [arg-type]',
        'program.py:5: error: Unexpected keyword argument "reconect" for "connect"; '
        'did you mean "reconnect"?  [call-arg]',
    ]
