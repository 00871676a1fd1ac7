"""Errors that point at the line: plugin and codec options at their key path, every phase at once.

Each test runs `wsroute check` in-process on a file it writes, with plugins
from a real plugin folder, and reads what the user reads on stderr.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsroute.cli import main

PLUGIN = '''
    from dataclasses import dataclass, field

    from wsroute import OptionError


    class Alarm:
        """A handler whose options check themselves."""

        @dataclass
        class Options:
            limit: int = 1
            floor: int = 0
            name: str = "alarm"

            def __post_init__(self):
                if self.limit < 1:
                    raise OptionError("limit", "must be above 0")
                if self.floor < 0:
                    raise ValueError(f"floor must not be negative, got {self.floor}")
                if self.name == "both":
                    raise ValueError("limit and floor cannot both be set with this name")

        def __init__(self, options, ctx):
            self.options = options

        async def handle(self, message):
            pass


    class Picky:
        """A codec whose constructor checks its options."""

        @dataclass
        class Options:
            width: int = 4

        def __init__(self, options):
            if options.width not in (2, 4, 8):
                raise ValueError(f"width: must be 2, 4 or 8, got {options.width}")

        def decode(self, frame):
            raise NotImplementedError

        def encode(self, outgoing):
            raise NotImplementedError
'''


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "plugins"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "wsr_checked.py").write_text(textwrap.dedent(PLUGIN))
    yield folder
    sys.modules.pop("wsr_checked", None)


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """`wsroute check` on ``text``: exit 78 expected; the problems, without the prefix."""
    path = tmp_path / "wsroute.toml"
    path.write_text(textwrap.dedent(text).lstrip())
    assert main(["check", "-c", str(path)]) == 78
    prefix = f"wsroute: {path}: "
    lines = capsys.readouterr().err.splitlines()
    assert all(line.startswith(prefix) for line in lines), lines
    return [line[len(prefix) :] for line in lines]


def test_plugin_option_errors_carry_the_key_path_and_line(
    tmp_path: Path, plugin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = check(
        tmp_path,
        f"""
        [daemon]
        plugin_paths = ["{plugin_dir}"]

        [handlers.alarm]
        plugin = "wsr_checked:Alarm"
        limit = 0

        [handlers.floor]
        plugin = "wsr_checked:Alarm"
        floor = -2

        [handlers.both]
        plugin = "wsr_checked:Alarm"
        name = "both"

        [routes.r]
        handlers = ["alarm", "floor", "both"]
        """,
        capsys,
    )
    assert problems == [
        "handlers.alarm.limit: must be above 0 (line 6)",  # OptionError
        "handlers.floor.floor: must not be negative, got -2 (line 10)",  # "floor must ..."
        # About two options: reported at the table.
        "handlers.both: limit and floor cannot both be set with this name (line 12)",
    ]


def test_codec_option_errors_carry_the_key_path_and_line(
    tmp_path: Path, plugin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = check(
        tmp_path,
        f"""
        [daemon]
        plugin_paths = ["{plugin_dir}"]

        [connections.up]
        url = "ws://127.0.0.1:9/"
        codec = "picky"

        [codecs.picky]
        type = "wsr_checked:Picky"
        width = 3

        [codecs.frames]
        type = "struct"
        header = "<i"
        fields = ["a", "b"]
        """,
        capsys,
    )
    assert problems == [
        "codecs.picky.width: must be 2, 4 or 8, got 3 (line 10)",  # from the constructor
        'codecs.frames.fields: header "<i" unpacks 1 value, but 2 names are given (line 15)',
    ]


def test_a_codec_name_close_to_a_codecs_table_points_at_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = check(
        tmp_path,
        """
        [connections.up]
        url = "ws://127.0.0.1:9/"
        codec = "exchang"

        [codecs.exchange]
        type = "struct"
        header = "<i"
        """,
        capsys,
    )
    assert len(problems) == 1
    assert problems[0].startswith('connections.up.codec: unknown codec plugin "exchang"')
    assert problems[0].endswith("(did you mean [codecs.exchange]?) (line 3)")


def test_a_bad_codec_type_is_reported_at_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = check(
        tmp_path,
        """
        [connections.up]
        url = "ws://127.0.0.1:9/"
        codec = "exchange"

        [connections.down]
        url = "ws://127.0.0.1:9/"
        codec = "exchange"

        [codecs.exchange]
        type = "structt"
        header = "<i"

        [codecs.unused]
        type = "nope"
        """,
        capsys,
    )
    # Once, at codecs.X.type, not at each connection that uses it; unused tables too.
    assert [p.split(":")[0] for p in problems] == ["codecs.exchange.type", "codecs.unused.type"]
    assert 'unknown codec plugin "structt" (did you mean "struct"?)' in problems[0]
    assert problems[0].endswith("(line 10)")
    assert problems[1].endswith("(line 14)")


def test_a_type_error_does_not_hide_plugin_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = check(
        tmp_path,
        """
        [connections.up]
        url = "ws://127.0.0.1:9/"
        codec = "events"
        ping_interval = "often"

        [codecs.events]
        type = "json"
        key = "a..b"

        [routes.r]
        handlers = ["a", "b"]

        [handlers.a]
        plugin = "jsonl"
        path = "/tmp/never-written.jsonl"
        queue = "ten"

        [handlers.b]
        plugin = "log"
        max_body = -1
        """,
        capsys,
    )
    assert problems == [
        'connections.up.ping_interval: expected a duration like "30s", got "often" (line 4)',
        'codecs.events.key: invalid dotted path "a..b": it needs names separated by single '
        "dots (line 8)",
        'handlers.a.queue: expected an integer, got "ten" (line 16)',
        "handlers.b.max_body: must not be negative (line 20)",
    ]


def test_a_tables_own_type_errors_hide_none_of_its_options_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every problem of every table in one run: the delivery keys' types, the plugin's
    # unknown keys and option types, an enum, a source's own keys and its options.
    problems = check(
        tmp_path,
        """
        [routes.r]
        handlers = ["archive"]

        [handlers.archive]
        plugin = "jsonl"
        path = "/tmp/never-written.jsonl"
        queue = "many"
        overflow = "drop-old"
        fsync = "yes"
        pathh = 1

        [sources.s]
        type = "redis-stream"
        codec = 5
        streem = "x"
        """,
        capsys,
    )
    assert problems == [
        'handlers.archive.queue: expected an integer, got "many" (line 7)',
        'handlers.archive.overflow: expected one of "block" | "drop-oldest" | "drop-newest", '
        'got "drop-old" (did you mean "drop-oldest"?) (line 8)',
        'handlers.archive.fsync: expected a boolean, got "yes" (line 9)',
        'handlers.archive.pathh: unknown key (did you mean "path"?) (line 10)',
        "sources.s.stream: missing required key (line 12)",
        "sources.s.codec: expected a string, got 5 (line 14)",
        'sources.s.streem: unknown key (did you mean "stream"?) (line 15)',
    ]
