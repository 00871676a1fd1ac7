"""The config loader: every error kind at its exact key path, all at once, with lines.

Configs are real files in tmp_path; nothing is mocked.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wsroute.config import (
    CodecSection,
    Config,
    HandlerSection,
    codec_reference,
    line_of,
    load,
    loads,
    reference_markdown,
    split_path,
    unchanged_connections,
)
from wsroute.exceptions import ConfigError, ConfigIssue
from wsroute.plugin import Duration

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "wsroute.example.toml"
REFERENCE = ROOT / "docs" / "config.md"
SECRET = "hunter2-very-secret"

# The smallest config that loads without warnings; tests append to it.
BASE = """\
[connections.ex]
url = "wss://ex.test/"

[routes.all]
handlers = ["out"]

[handlers.out]
plugin = "log"
"""


def write(tmp_path: Path, text: str, name: str = "wsroute.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load(write(tmp_path, text), environ=environ or {})


def issues(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, environ)
    return info.value.issues


def only(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigIssue:
    found = issues(tmp_path, text, environ)
    assert len(found) == 1, found
    return found[0]


def at(found: list[ConfigIssue]) -> dict[str, str]:
    return {issue.path: issue.message for issue in found}


# --- the example and the generated reference


def test_example_config_is_valid_and_warns_only_of_its_placeholder_hosts() -> None:
    config = loads(EXAMPLE.read_text(), environ={})
    assert {(w.path, w.message.split(" is ")[1]) for w in config.warnings} == {
        (
            "connections.exchange.url",
            "a placeholder (a domain kept for examples): set the real host",
        ),
        ("connections.events.url", "a placeholder (a domain kept for examples): set the real host"),
    }
    exchange = config.connections["exchange"]
    assert exchange.headers == {}
    kinds = [
        "json"
        if s.json is not None and s.struct is None
        else "struct+json"
        if s.struct is not None
        else "pause"
        if s.pause is not None
        else "expect"
        for s in exchange.on_connect
    ]
    assert kinds == ["json", "pause", "struct+json", "expect"]
    assert exchange.on_connect[2].outgoing().struct == ("<i", (2,))
    assert exchange.every[0].interval == 30
    assert codec_reference(config, "exchange")[0] == "struct"
    assert codec_reference(config, "events") == ("json", {"key": "type"})
    assert set(config.handlers) == {"archive", "printer", "pong", "dlq"}
    assert {h.plugin for h in config.handlers.values()} == {"jsonl", "log", "reply"}
    assert config.handlers["printer"].options == {"level": "info"}
    assert config.handlers["pong"].options == {
        "struct": {"format": "<i", "values": [11]},
        "json": {"pong": True},
    }


def test_example_config_reads_its_token_from_a_credential_once_uncommented(
    tmp_path: Path,
) -> None:
    """The example starts without a secret (the shipped units load none); the
    commented header line is the documented way to add the token."""
    line = '# headers = { Authorization = "Bearer ${credential:exchange-token}" }'
    text = EXAMPLE.read_text()
    assert text.count(line) == 1
    uncommented = text.replace(line, line.removeprefix("# "))
    with pytest.raises(ConfigError) as info:
        loads(uncommented, environ={})
    (issue,) = info.value.issues
    assert issue.path == "connections.exchange.headers.Authorization"
    assert "CREDENTIALS_DIRECTORY" in issue.message
    assert issue.line is not None
    (tmp_path / "exchange-token").write_text(SECRET + "\n")
    config = loads(uncommented, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.connections["exchange"].headers == {"Authorization": f"Bearer {SECRET}"}


def test_reference_docs_are_in_sync_with_the_code() -> None:
    # On failure: .venv/bin/python -m wsroute.config --reference > docs/config.md
    assert REFERENCE.read_text() == reference_markdown()


def test_reference_covers_every_key() -> None:
    text = reference_markdown()
    keys = ("ping_interval", "reset_after", "ca_file", "type", "overflow", "dead_letter")
    for key in (*keys, "pause", "expect", "interval", "values", "timeout", "handlers"):
        assert f"| `{key}` |" in text
    assert "${credential:NAME}" in text
    assert "KiB" in text
    assert "regenerate" in text.lower()


def test_reference_is_printed_by_the_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wsroute.config", "--reference"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout == reference_markdown()


# --- loading files


def test_load_records_the_path_and_two_loads_are_equal(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    first, second = load(path, environ={}), load(path, environ={})
    assert first.path == str(path)
    assert first == second
    assert first != loads(BASE + '\n[daemon]\nlog_level = "debug"\n', path=str(path), environ={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.toml")
    (issue,) = info.value.issues
    assert issue.message.startswith(f"cannot read config file {tmp_path / 'nope.toml'}: ")
    assert info.value.source == str(tmp_path / "nope.toml")


def test_file_must_be_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[daemon]\nlog_level = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    (issue,) = info.value.issues
    assert issue.message.startswith("not UTF-8 text")
    assert issue.line == 2


def test_empty_file_is_a_valid_config() -> None:
    config = loads("", environ={})
    assert config == Config()


# --- pass 1: syntax


def test_syntax_error_reports_the_parser_line(tmp_path: Path) -> None:
    issue = only(tmp_path, '[daemon]\nlog_level = "info"\n[connections.x\nurl = "ws://a"\n')
    assert issue.path == ""
    assert issue.line == 3
    assert issue.message.startswith("TOML syntax error at column")
    assert str(issue).endswith("(line 3)")


def test_syntax_error_at_end_of_file(tmp_path: Path) -> None:
    issue = only(tmp_path, "a = 1\nb = ")
    assert issue.message.startswith("TOML syntax error at the end of the file")
    assert issue.line == 2


# --- pass 2: interpolation


def test_interpolation_in_config_values(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "pw").write_text("from-credential")
    config = load_text(
        tmp_path,
        BASE
        + """
        [connections.ex.headers]
        A = "${TOKEN}"
        B = "${file:token}"
        C = "${credential:pw}"
        D = "$${literal}"
        """.replace("\n        ", "\n"),
        {"TOKEN": "from-env", "CREDENTIALS_DIRECTORY": str(creds)},
    )
    assert config.connections["ex"].headers == {
        "A": "from-env",
        "B": "from-file",
        "C": "from-credential",
        "D": "${literal}",
    }


def test_interpolation_happens_before_type_checks(tmp_path: Path) -> None:
    text = BASE.replace('url = "wss://ex.test/"', 'url = "${URL}"\nping_interval = "${P:-5s}"')
    config = load_text(tmp_path, text, {"URL": "ws://a/"})
    assert config.connections["ex"].url == "ws://a/"
    assert config.connections["ex"].ping_interval == 5


@pytest.mark.parametrize(
    ("value", "start"),
    [
        ("${NOPE}", "environment variable NOPE is not set"),
        ("${file:missing.txt}", "cannot read ${file:missing.txt}: "),
        (
            "${credential:token}",
            'cannot read credential "token": $CREDENTIALS_DIRECTORY is not set',
        ),
        ("${bad ref}", 'invalid reference "${bad ref}"'),
        ("${OPEN", 'unterminated "${"'),
    ],
)
def test_interpolation_failures_name_the_key(tmp_path: Path, value: str, start: str) -> None:
    issue = only(tmp_path, BASE + f'\n[daemon]\nunmatched = "{value}"\n')
    assert issue.path == "daemon.unmatched"
    assert issue.message.startswith(start)
    assert issue.line == BASE.count("\n") + 3


def test_failed_interpolation_has_no_follow_up_errors(tmp_path: Path) -> None:
    # The url stays "${URL}" (not ws://) and the route names "${CONN}": both are
    # only reported as unset variables.
    text = (
        BASE.replace('"wss://ex.test/"', '"${URL}"')
        + '\n[routes.x]\nconnection = "${CONN}"\nhandlers = ["out"]\n'
    )
    found = issues(tmp_path, text)
    assert at(found) == {
        "connections.ex.url": "environment variable URL is not set "
        "(write ${URL:-default} for a default)",
        "routes.x.connection": "environment variable CONN is not set "
        "(write ${CONN:-default} for a default)",
    }


def test_interpolated_secrets_stay_out_of_type_errors(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET)
    text = BASE.replace('"wss://ex.test/"', '"https://${TOKEN}@host/"') + textwrap.dedent(
        """
        [daemon]
        shutdown_timeout = "${file:secret}"
        log_level = "${TOKEN}"
        """
    )
    found = issues(tmp_path, text, {"TOKEN": SECRET})
    assert at(found) == {
        "connections.ex.url": 'must start with ws:// or wss://, got "https://***@host/"',
        "daemon.shutdown_timeout": 'expected a duration like "30s", got "${file:secret}"',
        "daemon.log_level": 'expected one of "debug" | "info" | "warning" | "error", '
        'got "${TOKEN}"',
    }
    for issue in found:
        assert SECRET not in str(issue)


def test_header_value_with_a_line_break_is_refused_without_showing_it(tmp_path: Path) -> None:
    text = BASE + '\n[connections.ex.headers]\nAuthorization = "${TOKEN}"\n'
    issue = only(tmp_path, text, {"TOKEN": f"{SECRET}\r\nX-Injected: 1"})
    assert issue.path == "connections.ex.headers"
    assert issue.message == "the value of Authorization must not contain a line break"


# --- pass 3: top-level keys and names


def test_unknown_top_level_key_with_hint(tmp_path: Path) -> None:
    issue = only(tmp_path, BASE + '\n[deamon]\nlog_level = "info"\n')
    assert issue.path == "deamon"
    assert issue.message == 'unknown key (did you mean "daemon"?)'
    assert issue.line == BASE.count("\n") + 2


def test_unknown_top_level_key_without_hint(tmp_path: Path) -> None:
    issue = only(tmp_path, "foo = 1\n" + BASE)
    assert (issue.path, issue.message) == ("foo", "unknown key")


@pytest.mark.parametrize(
    ("header", "path", "message"),
    [
        (
            '[handlers."a b"]',
            'handlers."a b"',
            'invalid name: use only letters, digits, "_" and "-"',
        ),
        ('[handlers."é"]', 'handlers."é"', 'invalid name: use only letters, digits, "_" and "-"'),
        ('[handlers."$x"]', 'handlers."$x"', 'names starting with "$" are reserved'),
    ],
)
def test_table_names(tmp_path: Path, header: str, path: str, message: str) -> None:
    found = issues(tmp_path, BASE + f'\n{header}\nplugin = "log"\n')
    assert at(found)[path] == message
    # A bad name is still a handler nobody routes to, but warnings wait for a valid file.
    assert len(found) == 1


def test_names_with_dashes_and_underscores_are_fine(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE.replace('"out"', '"out_1-b"').replace(".out]", ".out_1-b]"))
    assert list(config.handlers) == ["out_1-b"]


def test_section_and_named_entries_must_be_tables(tmp_path: Path) -> None:
    found = issues(tmp_path, 'codecs = 1\n[connections]\nurl = "ws://a/"\n')
    assert at(found) == {
        "codecs": "expected [codecs.NAME] tables, got 1",
        "connections.url": 'expected a table, got "ws://a/" '
        "(each of connections is a [connections.NAME] table)",
    }


# --- pass 4: types


def test_misspelt_key_gets_a_hint_and_a_line(tmp_path: Path) -> None:
    text = BASE.replace('url = "wss://ex.test/"', 'url = "wss://ex.test/"\nping_intervall = "20s"')
    issue = only(tmp_path, text)
    assert issue.path == "connections.ex.ping_intervall"
    assert issue.message == 'unknown key (did you mean "ping_interval"?)'
    assert issue.line == 3
    assert str(issue) == (
        'connections.ex.ping_intervall: unknown key (did you mean "ping_interval"?) (line 3)'
    )


def test_misspelt_literal_gets_a_hint(tmp_path: Path) -> None:
    issue = only(tmp_path, BASE + 'overflow = "drop-olds"\n')
    assert issue.path == "handlers.out.overflow"
    assert issue.message == (
        'expected one of "block" | "drop-oldest" | "drop-newest", got "drop-olds" '
        '(did you mean "drop-oldest"?)'
    )


def test_the_design_example_error(tmp_path: Path) -> None:
    text = BASE + "\n[connections.ex.reconnect]\nmax = -1\n"
    issue = only(tmp_path, text)
    assert str(issue) == (
        'connections.ex.reconnect.max: expected a duration like "30s", got -1 (line 11)'
    )


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ('"250ms"', 0.25),
        ('"30s"', 30.0),
        ('"5m"', 300.0),
        ('"1h"', 3600.0),
        ('"1m30s"', 90.0),
        ("0", 0.0),
    ],
)
def test_durations(tmp_path: Path, written: str, seconds: float) -> None:
    config = load_text(tmp_path, BASE + f"\n[daemon]\nshutdown_timeout = {written}\n")
    assert config.daemon.shutdown_timeout == seconds


@pytest.mark.parametrize("written", ['"30"', "30", '"-1s"', '"1d"', '"fast"', "true", '""'])
def test_bad_durations(tmp_path: Path, written: str) -> None:
    issue = only(tmp_path, BASE + f"\n[daemon]\nshutdown_timeout = {written}\n")
    assert issue.path == "daemon.shutdown_timeout"
    assert issue.message == f'expected a duration like "30s", got {written}'


@pytest.mark.parametrize(
    ("written", "size"),
    [('"512B"', 512), ('"64KiB"', 65536), ('"1MiB"', 2**20), ('"1MB"', 10**6), ("4096", 4096)],
)
def test_sizes(tmp_path: Path, written: str, size: int) -> None:
    text = BASE.replace(
        'url = "wss://ex.test/"', f'url = "wss://ex.test/"\nmax_frame_size = {written}'
    )
    assert load_text(tmp_path, text).connections["ex"].max_frame_size == size


@pytest.mark.parametrize("written", ['"1mb"', '"1 XiB"', "-1", '"big"'])
def test_bad_sizes(tmp_path: Path, written: str) -> None:
    text = BASE.replace(
        'url = "wss://ex.test/"', f'url = "wss://ex.test/"\nmax_frame_size = {written}'
    )
    issue = only(tmp_path, text)
    assert issue.path == "connections.ex.max_frame_size"
    assert issue.message == f'expected a size like "1MiB", got {written}'


def test_missing_required_keys(tmp_path: Path) -> None:
    found = issues(tmp_path, "[connections.ex]\n[routes.r]\n[handlers.h]\n[codecs.c]\n")
    assert at(found) == {
        "connections.ex.url": "missing required key",
        "routes.r.handlers": "missing required key",
        "handlers.h.plugin": "missing required key",
        "codecs.c.type": "missing required key",
    }
    assert [issue.line for issue in found] == [1, 2, 3, 4]


def test_wrong_types_inside_arrays_and_tables(tmp_path: Path) -> None:
    text = BASE.replace(
        'url = "wss://ex.test/"',
        'url = "wss://ex.test/"\nsubprotocols = ["a", 2]\n'
        'headers = { X = 1 }\ntls = { verify = "no" }',
    )
    assert at(issues(tmp_path, text)) == {
        "connections.ex.subprotocols[1]": "expected a string, got 2",
        "connections.ex.headers.X": "expected a string, got 1",
        "connections.ex.tls.verify": 'expected a boolean, got "no"',
    }


@pytest.mark.parametrize(
    ("table", "path", "message"),
    [
        (
            'url = "http://x/"',
            "connections.ex.url",
            'must start with ws:// or wss://, got "http://x/"',
        ),
        (
            'url = "ws://x/"\nproxy = "yes"',
            "connections.ex.proxy",
            'must be "none", "env" or a proxy URL (http://, socks5://), got "yes"',
        ),
        (
            'url = "ws://x/"\ntls = { key_file = "k.pem" }',
            "connections.ex.tls.key_file",
            "needs cert_file",
        ),
        (
            'url = "ws://x/"\nreconnect = { initial = "5s", max = "1s" }',
            "connections.ex.reconnect.max",
            "must not be below initial",
        ),
        (
            'url = "ws://x/"\nreconnect = { jitter = 1.5 }',
            "connections.ex.reconnect.jitter",
            "must be between 0.0 and 1.0, got 1.5",
        ),
        (
            'url = "ws://x/"\nreconnect = { factor = nan }',
            "connections.ex.reconnect.factor",
            "expected a finite number, got nan",
        ),
        (
            'url = "ws://x/"\nheaders = { "a b" = "1" }',
            "connections.ex.headers",
            '"a b" is not a valid HTTP header name',
        ),
        (
            'url = "ws://x/"\ntransport = "aiohttp"',
            "connections.ex.transport",
            'expected one of "websockets" | "picows", got "aiohttp"',
        ),
        (
            'url = "ws://x/"\ntransport = "picows"',
            "connections.ex.transport",
            '"picows" was removed: use transport = "websockets" (the default)',
        ),
    ],
)
def test_connection_checks(tmp_path: Path, table: str, path: str, message: str) -> None:
    text = BASE.replace('url = "wss://ex.test/"', table)
    issue = only(tmp_path, text)
    assert (issue.path, issue.message) == (path, message)
    assert issue.line is not None


@pytest.mark.parametrize(
    ("line", "path", "message"),
    [
        ("queue = 0", "handlers.out.queue", "must be at least 1, got 0"),
        ("concurrency = 0", "handlers.out.concurrency", "must be at least 1, got 0"),
        ("retries = -1", "handlers.out.retries", "must not be negative, got -1"),
        ('timeout = "soon"', "handlers.out.timeout", 'expected a duration like "30s", got "soon"'),
        ('plugin = ""', "handlers.out.plugin", "must not be empty"),
    ],
)
def test_delivery_key_checks(tmp_path: Path, line: str, path: str, message: str) -> None:
    text = BASE.replace(
        'plugin = "log"', line if line.startswith("plugin") else f'plugin = "log"\n{line}'
    )
    issue = only(tmp_path, text)
    assert (issue.path, issue.message) == (path, message)


def test_handler_table_splits_into_delivery_keys_and_plugin_options(tmp_path: Path) -> None:
    text = BASE.replace(
        'plugin = "log"',
        'plugin = "jsonl"\npath = "/x.jsonl"\nqueue = 5\ntimeout = "1s"\n'
        'nested = { a = [1, 2] }\noverflw = "typo goes to the plugin"',
    )
    handler = load_text(tmp_path, text).handlers["out"]
    assert handler == HandlerSection(
        plugin="jsonl",
        queue=5,
        timeout=Duration(1.0),
        options={"path": "/x.jsonl", "nested": {"a": [1, 2]}, "overflw": "typo goes to the plugin"},
    )


def test_codec_table_splits_into_type_and_options(tmp_path: Path) -> None:
    text = (
        BASE.replace('url = "wss://ex.test/"', 'url = "wss://ex.test/"\ncodec = "mine"')
        + '\n[codecs.mine]\ntype = "struct"\nheader = "<i"\nfields = ["opcode"]\n'
    )
    config = load_text(tmp_path, text)
    assert config.codecs["mine"] == CodecSection(
        type="struct", options={"header": "<i", "fields": ["opcode"]}
    )
    assert codec_reference(config, "ex") == ("struct", {"header": "<i", "fields": ["opcode"]})


def test_codec_type_must_be_a_non_empty_string(tmp_path: Path) -> None:
    text = BASE + '\n[codecs.a]\ntype = 1\n[codecs.b]\ntype = ""\n'
    assert at(issues(tmp_path, text)) == {
        "codecs.a.type": "expected a string, got 1",
        "codecs.b.type": "must not be empty",
    }


# --- on_connect and every


def steps(*bodies: str) -> str:
    return BASE + "".join(f"\n[[connections.ex.on_connect]]\n{body}\n" for body in bodies)


def test_each_kind_of_step(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        steps(
            'expect = { key = "welcome" }',  # first step: the server speaks first
            'json = { role = "admin" }',
            'text = "hello"',
            'raw = "02 00 00 00"',
            'pause = "250ms"',
            'struct = { format = "<ib", values = [0, 0] }',
            'struct = { format = "<i", values = [2] }\njson = ["first", "test"]',
        ),
    )
    on_connect = config.connections["ex"].on_connect
    assert on_connect[0].expect is not None
    assert on_connect[0].expect.key == "welcome"
    assert on_connect[0].expect.timeout == 5.0
    assert not on_connect[0].is_frame
    assert on_connect[3].raw == b"\x02\x00\x00\x00"
    assert on_connect[4].pause == 0.25
    assert on_connect[6].outgoing().has_json
    assert [s.is_frame for s in on_connect] == [False, True, True, True, False, True, True]


@pytest.mark.parametrize(
    ("body", "kinds"),
    [
        ('text = "a"\nraw = "00"', "text and raw"),
        ('json = 1\npause = "1s"', "json/struct and pause"),
        ('pause = "1s"\nexpect = { key = 1 }', "pause and expect"),
    ],
)
def test_two_kinds_in_one_step_is_an_error(tmp_path: Path, body: str, kinds: str) -> None:
    issue = only(tmp_path, steps("json = 1", body))
    assert issue.path == "connections.ex.on_connect[1]"
    assert issue.message == (
        f"a step is exactly one of: json, struct (+ json), text, raw, pause, expect; got {kinds}"
    )
    assert issue.line == BASE.count("\n") + 5  # the second [[...on_connect]] header


def test_empty_step_is_an_error(tmp_path: Path) -> None:
    issue = only(tmp_path, steps(""))
    assert issue.path == "connections.ex.on_connect[0]"
    assert (
        issue.message == "a step is exactly one of: json, struct (+ json), text, raw, pause, expect"
    )


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        (
            'struct = { format = "<i", values = ["x"] }',
            "connections.ex.on_connect[0].struct",
            "cannot pack ['x'] with format \"<i\": required argument is not an integer",
        ),
        (
            "struct = { values = [1] }",
            "connections.ex.on_connect[0].struct.format",
            "missing required key",
        ),
        (
            'raw = "zz"',
            "connections.ex.on_connect[0].raw",
            'expected hex bytes like "02 00 00 00", got "zz"',
        ),
        (
            "expect = { key = 1, timeout = 0 }",
            "connections.ex.on_connect[0].expect.timeout",
            "must be above 0",
        ),
        (
            'expect = { timeout = "1s" }',
            "connections.ex.on_connect[0].expect.key",
            "missing required key",
        ),
        ('wait = "1s"', "connections.ex.on_connect[0].wait", "unknown key"),
        ('paus = "1s"', "connections.ex.on_connect[0].paus", 'unknown key (did you mean "pause"?)'),
    ],
)
def test_step_checks(tmp_path: Path, body: str, path: str, message: str) -> None:
    issue = only(tmp_path, steps(body))
    assert (issue.path, issue.message) == (path, message)


def test_subtable_of_a_step_gets_its_index_and_line(tmp_path: Path) -> None:
    text = (
        steps("json = 1", "")
        + '[connections.ex.on_connect.struct]\nformat = "<i"\nvalues = ["x"]\n'
    )
    issue = only(tmp_path, text)
    assert issue.path == "connections.ex.on_connect[1].struct"
    assert issue.line == text.splitlines().index("[connections.ex.on_connect.struct]") + 1


def test_every(tmp_path: Path) -> None:
    text = (
        BASE
        + '\n[[connections.ex.every]]\ninterval = "2s"\n'
        + 'struct = { format = "<ib", values = [0, 0] }\n'
    )
    every = load_text(tmp_path, text).connections["ex"].every
    assert every[0].interval == 2.0


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        (
            'interval = "1s"',
            "connections.ex.every[0]",
            "a periodic frame is exactly one of: json, struct (+ json), text, raw",
        ),
        (
            'text = "a"\nraw = "00"',
            "connections.ex.every[0]",
            "a periodic frame is exactly one of: json, struct (+ json), text, raw; "
            "got text and raw",
        ),
        ('interval = 0\ntext = "a"', "connections.ex.every[0].interval", "must be above 0"),
        ('pause = "1s"\ntext = "a"', "connections.ex.every[0].pause", "unknown key"),
    ],
)
def test_every_checks(tmp_path: Path, body: str, path: str, message: str) -> None:
    issue = only(tmp_path, BASE + f"\n[[connections.ex.every]]\n{body}\n")
    assert (issue.path, issue.message) == (path, message)


# --- routes


def test_route_keys(tmp_path: Path) -> None:
    text = BASE + (
        '\n[routes.one]\nkey = 2\nhandlers = ["out"]\n'
        '\n[routes.many]\nkey = [1, "tick", true, 1.5, "$connected"]\nhandlers = ["out"]\n'
    )
    routes = load_text(tmp_path, text).routes
    assert routes["all"].keys is None
    assert routes["one"].keys == (2,)
    assert routes["many"].keys == (1, "tick", True, 1.5, "$connected")
    assert list(routes) == ["all", "one", "many"]  # file order


@pytest.mark.parametrize(
    ("route", "path", "message"),
    [
        ("handlers = []", "routes.all.handlers", "must name at least one handler"),
        ('handlers = ["out", "out"]', "routes.all.handlers", 'lists "out" twice'),
        (
            'handlers = ["out"]\nkey = []',
            "routes.all.key",
            "is an empty list, which matches nothing; leave key out for any key",
        ),
        ('handlers = "out"', "routes.all.handlers", 'expected an array of string, got "out"'),
        (
            'handlers = ["out"]\nkey = { a = 1 }',
            "routes.all.key",
            "expected string | integer | number | boolean | array of string | integer | number "
            "| boolean, got a table",
        ),
    ],
)
def test_route_checks(tmp_path: Path, route: str, path: str, message: str) -> None:
    issue = only(tmp_path, BASE.replace('handlers = ["out"]', route))
    assert (issue.path, issue.message) == (path, message)


# --- pass 5: references


def test_route_names_an_unknown_connection(tmp_path: Path) -> None:
    issue = only(
        tmp_path, BASE.replace('handlers = ["out"]', 'connection = "exx"\nhandlers = ["out"]')
    )
    assert issue.path == "routes.all.connection"
    assert issue.message == 'no connection named "exx" (did you mean "ex"?)'
    assert issue.line == 5


def test_route_names_unknown_handlers(tmp_path: Path) -> None:
    found = issues(tmp_path, BASE.replace('["out"]', '["out", "ot", "nobody"]'))
    assert at(found) == {
        "routes.all.handlers[1]": 'no handler named "ot" (did you mean "out"?)',
        "routes.all.handlers[2]": 'no handler named "nobody"',
    }
    assert {issue.line for issue in found} == {5}


def test_dead_letter_and_unmatched_must_name_handlers(tmp_path: Path) -> None:
    text = BASE + 'dead_letter = "dlq"\n\n[daemon]\nunmatched = "outt"\ndead_letter = "nope"\n'
    assert at(issues(tmp_path, text)) == {
        "handlers.out.dead_letter": 'no handler named "dlq"',
        "daemon.unmatched": 'no handler named "outt" (did you mean "out"?)',
        "daemon.dead_letter": 'no handler named "nope"',
    }


def test_handler_cannot_be_its_own_dead_letter(tmp_path: Path) -> None:
    issue = only(tmp_path, BASE + 'dead_letter = "out"\n')
    assert (issue.path, issue.message) == (
        "handlers.out.dead_letter",
        "a handler cannot be its own dead letter",
    )


def test_references_are_checked_even_where_types_failed(tmp_path: Path) -> None:
    text = BASE.replace('handlers = ["out"]', 'handlers = ["out", "missing"]\nkey = {}')
    assert set(at(issues(tmp_path, text))) == {"routes.all.key", "routes.all.handlers[1]"}


def test_unknown_codec_name_is_left_to_the_plugin_phase(tmp_path: Path) -> None:
    text = BASE.replace('url = "wss://ex.test/"', 'url = "wss://ex.test/"\ncodec = "protobuf"')
    config = load_text(tmp_path, text)
    assert config.warnings == []
    assert codec_reference(config, "ex") == ("protobuf", {})


def test_builtin_codec_reference(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE)
    assert codec_reference(config, "ex") == ("json", {})
    with pytest.raises(KeyError):
        codec_reference(config, "nope")


def test_codec_table_wins_over_a_builtin_name(tmp_path: Path) -> None:
    text = BASE + '\n[codecs.json]\ntype = "json"\nkey = "kind"\n'
    assert codec_reference(load_text(tmp_path, text), "ex") == ("json", {"key": "kind"})


# --- all at once


def test_three_mistakes_give_three_issues(tmp_path: Path) -> None:
    text = """\
        [daemon]
        log_level = "loud"

        [connections.ex]
        url = "wss://ex.test/"
        ping_intervall = "20s"

        [routes.all]
        handlers = ["ot"]

        [handlers.out]
        plugin = "log"
        """
    found = issues(tmp_path, text)
    assert [(i.path, i.line) for i in found] == [
        ("daemon.log_level", 2),
        ("connections.ex.ping_intervall", 6),
        ("routes.all.handlers[0]", 9),
    ]
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert str(info.value).splitlines() == [str(issue) for issue in found]
    assert info.value.source == str(tmp_path / "wsroute.toml")


def test_every_message_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "multi").write_text("a\nb\nc\n")
    text = BASE + '\n[daemon]\nlog_level = "${file:multi}"\n'
    issue = only(tmp_path, text)
    assert "\n" not in str(issue)


# --- warnings


def test_handler_that_never_receives_messages(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE + '\n[handlers.spare]\nplugin = "log"\n')
    (warning,) = config.warnings
    assert warning.warning
    assert warning.path == "handlers.spare"
    assert warning.message == "never receives messages: no route, dead_letter or unmatched names it"
    assert warning.line == BASE.count("\n") + 2


def test_dead_letter_and_unmatched_handlers_receive_messages(tmp_path: Path) -> None:
    text = BASE + (
        'dead_letter = "dlq"\n[handlers.dlq]\nplugin = "jsonl"\n'
        '[handlers.rest]\nplugin = "log"\n[handlers.final]\nplugin = "log"\n'
        '[daemon]\nunmatched = "rest"\ndead_letter = "final"\n'
    )
    assert load_text(tmp_path, text).warnings == []


def test_connection_no_route_takes_messages_from(tmp_path: Path) -> None:
    text = BASE.replace('handlers = ["out"]', 'connection = "ex"\nhandlers = ["out"]') + (
        '\n[connections.other]\nurl = "ws://other/"\n'
    )
    (warning,) = load_text(tmp_path, text).warnings
    assert warning.path == "connections.other"
    assert warning.message == (
        "no route takes messages from this connection: they are only counted as unmatched"
    )
    text += '[daemon]\nunmatched = "out"\n'
    (warning,) = load_text(tmp_path, text).warnings
    assert warning.message.endswith('they all go to the unmatched handler "out"')


def test_wildcard_route_takes_every_connection(tmp_path: Path) -> None:
    text = BASE + '\n[connections.other]\nurl = "ws://other/"\n'
    assert load_text(tmp_path, text).warnings == []


def test_unused_codec_and_near_miss_codec_name(tmp_path: Path) -> None:
    text = BASE.replace('url = "wss://ex.test/"', 'url = "wss://ex.test/"\ncodec = "exchnage"') + (
        '\n[codecs.exchange]\ntype = "struct"\n'
    )
    config = load_text(tmp_path, text)
    assert at(config.warnings) == {
        "connections.ex.codec": '"exchnage" is neither a [codecs.NAME] table nor a built-in '
        'codec (did you mean "exchange"?)',
        "codecs.exchange": "no connection uses this codec",
    }


def test_warnings_do_not_affect_equality(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE + '\n[handlers.spare]\nplugin = "log"\n')
    other = load_text(tmp_path, BASE + '\n[handlers.spare]\nplugin = "log"\n')
    other.warnings = []
    assert config == other


# --- reload support


def test_unchanged_connections(tmp_path: Path) -> None:
    text = BASE + (
        '\n[connections.b]\nurl = "ws://b/"\ncodec = "c"\n'
        '\n[connections.c]\nurl = "ws://c/"\n'
        '\n[codecs.c]\ntype = "json"\nkey = "type"\n'
    )
    old = loads(text, environ={})
    new = loads(
        text.replace('key = "type"', 'key = "kind"').replace("ws://c/", "ws://c2/")
        + '\n[connections.d]\nurl = "ws://d/"\n',
        environ={},
    )
    assert unchanged_connections(old, new) == {"ex"}
    assert unchanged_connections(old, loads(text, environ={})) == {"ex", "b", "c"}


# --- line numbers and key paths


def test_line_of() -> None:
    text = textwrap.dedent(
        """\
        # comment
        [daemon]
        log_level = "info"

        [connections.ex]
        url = "wss://x/"
        tls = { verify = false }
        reconnect.max = "5s"
        notes = \"\"\"
        fake = "not a key"
        \"\"\"

        [[connections.ex.on_connect]]
        json = 1
        [[connections.ex.on_connect]]
        [connections.ex.on_connect.struct]
        format = "<i"

        [ handlers . "a b" ]
        plugin = 'log'
        "quoted.key" = 1
        """
    )
    assert line_of(text, "daemon") == 2
    assert line_of(text, "daemon.log_level") == 3
    assert line_of(text, "daemon.shutdown_timeout") == 2  # missing: its table
    assert line_of(text, "connections.ex.tls.verify") == 7  # inside an inline table
    assert line_of(text, "connections.ex.reconnect") == 8  # only a dotted key sets it
    assert line_of(text, "connections.ex.fake") == 5  # inside a multi-line string: no key
    assert line_of(text, "connections.ex.on_connect[0].json") == 14
    assert line_of(text, "connections.ex.on_connect[1]") == 15
    assert line_of(text, "connections.ex.on_connect[1].struct.format") == 17
    assert line_of(text, 'handlers."a b".plugin') == 20
    assert line_of(text, 'handlers."a b"."quoted.key"') == 21
    assert line_of(text, "routes.r") is None
    assert line_of(text, "") is None


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("routes.market.handlers[1]", ["routes", "market", "handlers", 1]),
        ('handlers."a b".x', ["handlers", "a b", "x"]),
        ('a."x\\"y"[0][2]', ["a", 'x"y', 0, 2]),
        ("", []),
    ],
)
def test_split_path(path: str, parts: list[str | int]) -> None:
    assert split_path(path) == parts


def test_a_broken_table_still_counts_as_a_name(tmp_path: Path) -> None:
    issue = only(
        tmp_path, BASE.replace('[handlers.out]\nplugin = "log"\n', "[handlers]\nout = 5\n")
    )
    assert issue.path == "handlers.out"
    assert issue.message.startswith("expected a table, got 5")
