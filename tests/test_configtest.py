"""`wsroute test`: frames through the real codecs and routes, pass/fail lines, exit 0/1/78."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wsroute.cli import main

from conftest import REPO

CONFIG = """
[daemon]
dead_letter = "dlq"
unmatched = "leftovers"

[connections.exchange]
url = "ws://127.0.0.1:9/"
codec = "exchange"

[connections.events]
url = "ws://127.0.0.1:9/"
codec = "json"

[codecs.exchange]
type = "struct"
header = "<ib"
fields = ["opcode", "flag"]
body = "json"
key = "opcode"

[routes.ticks]
connection = "exchange"
key = [1, 2]
handlers = ["archive", "printer"]

[routes.everything]
handlers = ["printer", "audit"]

[routes.pings]
connection = "exchange"
key = 10
handlers = ["pong"]

[handlers.archive]
plugin = "log"
[handlers.printer]
plugin = "log"
[handlers.audit]
plugin = "log"
[handlers.pong]
plugin = "log"
[handlers.dlq]
plugin = "log"
[handlers.leftovers]
plugin = "log"
"""


def run_tests(
    tmp_path: Path, tests: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    config = tmp_path / "wsroute.toml"
    config.write_text(CONFIG)
    path = tmp_path / "wsroute.tests.toml"
    path.write_text(textwrap.dedent(tests).lstrip())
    status = main(["test", "-c", str(config), str(path)])
    out, err = capsys.readouterr()
    return status, out, err


def test_passing_tests_print_a_line_each_and_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_tests(
        tmp_path,
        """
        [[tests]]
        name = "a tick fans out to every matching route's handlers, in file order"
        connection = "exchange"
        frame.struct = { format = "<ib", values = [1, 0] }
        frame.json = { px = 1.5, side = "buy" }

        [tests.expect]
        key = 1
        fields = { opcode = 1, flag = 0 }
        body = { px = 1.5, side = "buy" }
        routes = ["ticks", "everything"]
        handlers = ["archive", "printer", "audit"]

        [[tests]]
        name = "a subset of the body"
        connection = "exchange"
        frame = { struct = { format = "<ib", values = [10, 1] }, json = { n = { a = 1, b = 2 } } }
        expect = { body = { n = { a = 1 } }, subset = true, handlers = ["printer","audit","pong"] }

        [[tests]]
        name = "raw hex frames"
        connection = "exchange"
        frame = { raw = "02 00 00 00 01 7b 7d" }
        expect = { key = 2, fields = { opcode = 2, flag = 1 }, body = {} }
        """,
        capsys,
    )
    assert status == 0, out
    assert out.splitlines() == [
        "ok    a tick fans out to every matching route's handlers, in file order",
        "ok    a subset of the body",
        "ok    raw hex frames",
        "3 tests: 3 passed, 0 failed",
    ]


def test_a_failing_test_shows_what_differs_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_tests(
        tmp_path,
        """
        [[tests]]
        name = "passes"
        connection = "events"
        frame = { json = { type = "news" } }
        expect = { key = "news", handlers = ["printer", "audit"] }

        [[tests]]
        name = "expects the wrong things"
        connection = "exchange"
        frame.struct = { format = "<ib", values = [1, 0] }
        frame.json = { px = 1.5, q = [1, 2], extra = true }
        expect = { key = 2, body = { px = 2, q = [1, 3], gone = "x" }, handlers = ["archive"] }
        """,
        capsys,
    )
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == "ok    passes"
    assert (
        lines[1] == f"FAIL  expects the wrong things  ({tmp_path / 'wsroute.tests.toml'}, line 7)"
    )
    assert lines[2:-1] == [
        "      key: expected 2, got 1",
        "      body.px: expected 2, got 1.5",
        "      body.q[1]: expected 3, got 2",
        '      body.gone: expected "x", missing',
        "      body.extra: not expected, got true",
        '      handlers: expected ["archive"], got ["archive", "printer", "audit"]',
    ]
    assert lines[-1] == "2 tests: 1 passed, 1 failed"


def test_decode_errors_and_their_dead_letter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_tests(
        tmp_path,
        """
        [[tests]]
        name = "too short for the header"
        connection = "exchange"
        frame = { raw = "01 00" }
        expect = { decode_error = "header", dead_letter = "dlq" }

        [[tests]]
        name = "not JSON"
        connection = "events"
        frame = { text = "{oops" }
        expect = { decode_error = true }

        [[tests]]
        name = "a decodable frame expected to fail"
        connection = "events"
        frame = { json = { type = "fine" } }
        expect = { decode_error = true }

        [[tests]]
        name = "an undecodable frame expected to route"
        connection = "events"
        frame = { text = "nope" }
        expect = { handlers = ["printer", "audit"] }

        [[tests]]
        name = "the wrong dead letter"
        connection = "events"
        frame = { text = "nope" }
        expect = { decode_error = "no such words", dead_letter = "leftovers" }
        """,
        capsys,
    )
    assert status == 1
    lines = out.splitlines()
    assert lines[:2] == ["ok    too short for the header", "ok    not JSON"]
    assert lines[2].startswith("FAIL  a decodable frame expected to fail")
    assert lines[3] == '      decode_error: expected a decode error, got a message with key "fine"'
    assert lines[4].startswith("FAIL  an undecodable frame expected to route")
    assert lines[5].startswith("      decode error: invalid JSON")
    assert lines[6].startswith("FAIL  the wrong dead letter")
    assert lines[7].startswith('      decode_error: expected an error containing "no such words"')
    assert lines[8] == '      dead_letter: expected "leftovers", got "dlq"'
    assert lines[-1] == "5 tests: 2 passed, 3 failed"


def test_unmatched_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = CONFIG.replace('[routes.everything]\nhandlers = ["printer", "audit"]\n', "")
    (tmp_path / "wsroute.toml").write_text(config)
    tests = tmp_path / "t.toml"
    tests.write_text(
        textwrap.dedent(
            """
            [[tests]]
            name = "no route names key 5"
            connection = "exchange"
            frame = { struct = { format = "<ib", values = [5, 0] }, json = {} }
            expect = { key = 5, unmatched = true, handlers = [] }

            [[tests]]
            name = "an upstream $connected is never routed"
            connection = "events"
            frame = { json = { type = "$connected" } }
            expect = { unmatched = true, routes = [] }

            [[tests]]
            name = "expected unmatched, but routed"
            connection = "exchange"
            frame = { struct = { format = "<ib", values = [10, 0] }, json = {} }
            expect = { unmatched = true }
            """
        )
    )
    status = main(["test", "-c", str(tmp_path / "wsroute.toml"), str(tests)])
    lines = capsys.readouterr().out.splitlines()
    assert status == 1
    assert lines[:2] == [
        "ok    no route names key 5",
        "ok    an upstream $connected is never routed",
    ]
    assert lines[3] == '      unmatched: expected true, but routed to ["pong"]'


def test_a_bad_tests_file_is_exit_78_with_key_paths_and_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_tests(
        tmp_path,
        """
        [[tests]]
        name = "x"
        connection = "exchang"
        frame = { json = 1, text = "a" }
        expect = { handlers = ["archiv"], decode_error = true }

        [[tests]]
        name = "x"
        connection = "events"
        frame = { json = 1 }
        expect = {}
        extra = 1

        [[tests]]
        name = "unknown route, unknown dead letter"
        connection = "events"
        frame = { raw = "zz" }
        expect = { routes = ["tick"], unmatched = "yes" }
        """,
        capsys,
    )
    assert status == 78
    assert out == ""
    prefix = f"wsroute: {tmp_path / 'wsroute.tests.toml'}: "
    assert [line.removeprefix(prefix) for line in err.splitlines()] == [
        'tests[0].connection: no connection or source named "exchang" in the config '
        '(did you mean "exchange"?) (line 3)',
        "tests[0].frame: a frame is exactly one of: json, struct (+ json), text, raw; "
        "got json/struct and text (line 4)",
        "tests[0].expect.decode_error: cannot be combined with handlers: an undecodable "
        "frame has no key, body or routes (line 5)",
        'tests[0].expect.handlers[0]: no handler named "archiv" (did you mean "archive"?) (line 5)',
        "tests[1].expect: say what must happen: key, fields, body, handlers, routes, "
        "unmatched or decode_error (line 11)",
        "tests[1].extra: unknown key (line 12)",
        'tests[2].frame.raw: expected hex bytes like "02 00 00 00", got "zz" (line 17)',
        'tests[2].expect.unmatched: expected a boolean, got "yes" (line 18)',
        'tests[2].expect.routes[0]: no route named "tick" (did you mean "ticks"?) (line 18)',
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no [[tests]] in the file"),
        ("tests = 1\n", "tests: expected [[tests]] tables"),
        ("[[test]]\nname = 'x'\n", 'test: unknown key (did you mean "tests"?) (line 1)'),
        ("[[tests]\n", "TOML syntax error"),
    ],
)
def test_a_tests_file_that_is_not_a_list_of_tests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    status, _, err = run_tests(tmp_path, text, capsys)
    assert status == 78
    assert problem in err


def test_the_same_name_twice_and_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test = (
        '[[tests]]\nname = "a"\nconnection = "events"\nframe = { json = 1 }\nexpect = { key = 1 }\n'
    )
    status, _, err = run_tests(tmp_path, test + "\n" + test, capsys)
    assert status == 78
    assert 'tests[1].name: "a" is used twice (line 8)' in err
    status = main(["test", "-c", str(tmp_path / "wsroute.toml"), str(tmp_path / "missing.toml")])
    assert status == 78
    assert "cannot read tests file" in capsys.readouterr().err


def test_the_example_config_passes_its_tests() -> None:
    """What `make test` runs: the shipped example and its tests file, as a user would."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsroute.cli",
            "test",
            "-c",
            str(REPO / "config" / "wsroute.example.toml"),
            str(REPO / "config" / "wsroute.example.tests.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "EXCHANGE_TOKEN": "test-token"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert result.stdout.splitlines()[-1].endswith(" failed")
    assert ", 0 failed" in result.stdout


START_CONFIG = """
[connections.exchange]
url = "ws://127.0.0.1:9/"
codec = "json"

[routes.all]
handlers = ["archive", "pong"]

[routes.blocked]
key = "blocked"
handlers = ["stuck"]

[handlers.archive]
plugin = "jsonl"
path = "{folder}/archive.jsonl"

[handlers.pong]
plugin = "reply"
json = {{ op = "pong" }}

[handlers.stuck]
plugin = "jsonl"
path = "{folder}/gone/archive.jsonl"
"""


def test_start_true_runs_the_handlers_it_reaches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Handlers start only when a test asks; then they really handle the message."""
    config = tmp_path / "wsroute.toml"
    config.write_text(START_CONFIG.format(folder=tmp_path))
    tests = tmp_path / "wsroute.tests.toml"
    tests.write_text(
        textwrap.dedent(
            """
            [[tests]]
            name = "routed only"
            connection = "exchange"
            frame = { json = { type = "tick", px = 1 } }
            expect = { handlers = ["archive", "pong"] }

            [[tests]]
            name = "routed and handled"
            connection = "exchange"
            frame = { json = { type = "tick", px = 2 } }
            expect = { handlers = ["archive", "pong"] }
            start = true
            """
        )
    )
    assert main(["test", "-c", str(config), str(tests)]) == 0
    out, _ = capsys.readouterr()
    assert "2 tests: 2 passed, 0 failed" in out
    # Only the second test's message reached the jsonl file.
    lines = (tmp_path / "archive.jsonl").read_text().splitlines()
    assert len(lines) == 1
    assert '"px":2' in lines[0].replace(" ", "")

    # A handler that cannot start (its folder is gone) fails the test, named.
    tests.write_text(
        textwrap.dedent(
            """
            [[tests]]
            name = "the stuck handler"
            connection = "exchange"
            frame = { json = { type = "blocked" } }
            expect = { handlers = ["archive", "pong", "stuck"] }
            start = true
            """
        )
    )
    assert main(["test", "-c", str(config), str(tests)]) == 1
    out, _ = capsys.readouterr()
    assert "FAIL  the stuck handler" in out
    assert "handler stuck: start failed: " in out
    assert "handler archive" not in out


REJECTING_PLUGIN = '''
import anyio


class Rejecting:
    """Fails in a task of its own task group, as a plugin with background work does."""

    def __init__(self, options, ctx):
        pass

    async def handle(self, message):
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._check, message.key)

    async def _check(self, key):
        raise ValueError(f"rejected key {key!r}")
'''


def test_start_true_names_the_handlers_own_exception(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not the task groups' "ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)".
    plugins = tmp_path / "plugins"
    plugins.mkdir(mode=0o755)
    plugins.chmod(0o755)
    (plugins / "wsr_rejecting.py").write_text(REJECTING_PLUGIN)
    config = tmp_path / "wsroute.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [daemon]
            plugin_paths = ["{plugins}"]

            [connections.exchange]
            url = "ws://127.0.0.1:9/"

            [routes.all]
            handlers = ["archive"]

            [handlers.archive]
            plugin = "wsr_rejecting:Rejecting"
            """
        )
    )
    tests = tmp_path / "wsroute.tests.toml"
    tests.write_text(
        textwrap.dedent(
            """
            [[tests]]
            name = "subscribed"
            connection = "exchange"
            frame = { json = { type = "subscribed" } }
            expect = { handlers = ["archive"] }
            start = true
            """
        )
    )
    try:
        assert main(["test", "-c", str(config), str(tests)]) == 1
    finally:
        sys.modules.pop("wsr_rejecting", None)
    out, _ = capsys.readouterr()
    assert "handler archive: handle failed: ValueError: rejected key 'subscribed'" in out
    assert "ExceptionGroup" not in out
