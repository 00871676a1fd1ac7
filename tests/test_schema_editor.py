"""What an editor shows for a config, by the schema: Taplo (the TOML checker editors use).

One mistake is one error, at the line of its key: an enum's error lists the
allowed values, an unknown key is reported at that key (not at every key of
its table), a wrong type once. Taplo comes from npm (`@taplo/cli`): skipped on
a machine without it, required under CI (``.ci/run`` installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import REPO, need, tool_path, unavailable

SCHEMA = REPO / "config" / "wsroute.schema.json"
EXAMPLE = REPO / "config" / "wsroute.example.toml"
pytestmark = need("taplo")


# File name -> (the example's text, the changes made once each, text added at the end).
MISTAKES = {
    "clean.toml": (EXAMPLE, [], ""),
    "demo.toml": (REPO / "config" / "demo.toml", [], ""),
    "misspelled.toml": (EXAMPLE, [("ping_interval = ", "ping_intervall = ")], ""),
    "five.toml": (
        EXAMPLE,
        [
            ("ping_interval = ", "ping_intervall = "),  # a misspelled key
            ('overflow = "drop-oldest"', 'overflow = "drop-old"'),  # a wrong enum value
            ("queue = 10000", 'queue = "many"'),  # a string where a number belongs
            ("concurrency = 1 ", "concurrency = 0 "),  # a number under its minimum
        ],
        '\n[handler.extra]\nplugin = "log"\n',  # an unknown table
    ),
}
Errors = dict[str, list[tuple[str, str]]]


@pytest.fixture(scope="module")
def errors(tmp_path_factory: pytest.TempPathFactory) -> Errors:
    """``taplo check`` on every file of MISTAKES at once (Taplo takes seconds to start):
    file name -> (the key on the error's line, the message), in line order."""
    program = tool_path("taplo")
    if program is None:
        unavailable("taplo", "not installed")
    folder = tmp_path_factory.mktemp("taplo")
    shutil.copy(SCHEMA, folder / SCHEMA.name)
    texts = {}
    for name, (source, changes, append) in MISTAKES.items():
        lines = source.read_text().splitlines(keepends=True)
        assert lines[0].startswith("#:schema ")
        text = f"#:schema ./{SCHEMA.name}\n" + "".join(lines[1:])
        for old, new in changes:
            assert old in text
            text = text.replace(old, new, 1)
        texts[name] = (text + append).splitlines()
        (folder / name).write_text(text + append)
    done = subprocess.run(
        [program, "check", "--no-auto-config", "--colors", "never", *MISTAKES],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    found: Errors = {name: [] for name in MISTAKES}
    for message, name, line in re.findall(
        r"^error: (.*)\n\s*┌─ [^\n]*/([^/\n]+):(\d+):\d+$", output, re.MULTILINE
    ):
        key = texts[name][int(line) - 1].split("=")[0].strip()
        found[name].append((key, message))
    assert done.returncode != 0, output
    assert any(found.values()), output
    return found


def test_the_example_configs_are_clean(errors: Errors) -> None:
    assert errors["clean.toml"] == []
    assert errors["demo.toml"] == []


def test_a_misspelled_key_is_one_error_at_that_key(errors: Errors) -> None:
    ((key, message),) = errors["misspelled.toml"]
    assert key == "ping_intervall"
    assert "unknown key" in message


def test_five_planted_mistakes_are_five_errors_each_at_its_key(errors: Errors) -> None:
    keys = [key for key, _ in errors["five.toml"]]
    # The unknown table's error is at its one key (at each key, for a table of several).
    assert keys == ["ping_intervall", "queue", "concurrency", "overflow", "plugin"]
    messages = [message for _, message in errors["five.toml"]]
    assert "unknown key" in messages[0]
    assert messages[1] == '"many" is not of type "integer"'
    assert messages[2] == "0 is less than the minimum of 1"
    assert messages[3] == '"drop-old" is not one of ["block","drop-oldest","drop-newest"]'
    assert "unknown key" in messages[4]
