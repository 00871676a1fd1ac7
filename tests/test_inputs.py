"""Every file an operator hands to wsroute is read with bounds, and refused in one line.

Real subprocesses of the ``wsroute`` command on real files: nested and huge
inputs, FIFOs, devices, binary files, a sparse 8 GiB file. Each command must
end (a FIFO must not hang it), exit with its documented status, say what is
wrong in one line without a traceback, and stay within its memory bound
(peak RSS of the process, from ``wait4``, against the same command on a small
input).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsroute import DeadLetter, Message
from wsroute.inputs import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_RECORD_BYTES, MAX_VALUE_FILE_BYTES
from wsroute.records import encode_record

WSROUTE = str(Path(sys.executable).with_name("wsroute"))
MiB = 2**20

BASE = """
[daemon]
log_level = "warning"

[connections.up]
url = "ws://127.0.0.1:1/"

[routes.all]
handlers = ["archive"]

[handlers.archive]
plugin = "jsonl"
path = "{folder}/replayed.jsonl"
"""

TESTS = """
[[tests]]
name = "one"
connection = "up"
json = {{ type = "a", v = {value} }}
expect = {{ handlers = ["archive"] }}
"""


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The command, killed (and the test failed by the timeout) if it hangs."""
    return subprocess.run(
        [WSROUTE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def one_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The single stderr line of a refused command, after checking its exit status."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def peak_rss(args: list[str], folder: Path, timeout: float = 60) -> tuple[int, str, int]:
    """Exit status, stderr and peak RSS in bytes of one run of ``wsroute`` ``args``."""
    err = folder / f"stderr-{time.monotonic_ns()}"
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, str(err), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
    ]
    pid = os.posix_spawn(WSROUTE, [WSROUTE, *args], dict(os.environ), file_actions=actions)
    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), err.read_text(), usage.ru_maxrss * 1024
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.wait4(pid, 0)
            pytest.fail(f"wsroute {' '.join(args)} did not end within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "wsroute.toml"
    path.write_text(BASE.format(folder=tmp_path))
    return path


def nested_arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- nesting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "deep",
    [
        # deeper than tomllib's stack: it would raise RecursionError
        f"[handlers.archive.deep]\nx = {nested_arrays(5000)}\n",
        # one level over the limit: parsed, refused before anything walks it
        f"[handlers.archive.deep]\nx = {nested_arrays(MAX_DEPTH)}\n",
        # dotted keys nest without recursing in the parser: the walk after it must not
        "a" + ".a" * 3000 + " = 1\n",
    ],
    ids=["arrays-5000", "just-over", "dotted-3000"],
)
@pytest.mark.parametrize("command", ["check", "schema", "test", "status", "replay"])
def test_nesting_past_the_limit_is_one_line_in_every_command(
    tmp_path: Path, config: Path, deep: str, command: str
) -> None:
    config.write_text(config.read_text() + deep)
    args = {
        "check": ["check", "-c", str(config)],
        "schema": ["schema", "-c", str(config)],
        "test": ["test", "-c", str(config), str(tmp_path / "t.toml")],
        "status": ["status", "-c", str(config)],
        "replay": ["replay", "-c", str(config), str(tmp_path / "r.jsonl")],
    }[command]
    line = one_line(run(*args), 78)
    assert f"nested more than {MAX_DEPTH} levels deep" in line


def test_nesting_at_the_limit_is_accepted(tmp_path: Path, config: Path) -> None:
    config.write_text(
        config.read_text() + f"[handlers.archive.deep]\nx = {nested_arrays(MAX_DEPTH - 3)}\n"
    )
    result = run("check", "-c", str(config))
    # the jsonl plugin refuses the unknown option: the file itself was read and walked
    assert "handlers.archive.deep" in result.stderr
    assert "nested" not in result.stderr


def test_a_deeply_nested_tests_file_is_one_line(tmp_path: Path, config: Path) -> None:
    tests = tmp_path / "t.toml"
    tests.write_text(TESTS.format(value=nested_arrays(5000)))
    line = one_line(run("test", "-c", str(config), str(tests)), 78)
    assert line == f"wsroute: {tests}: nested more than {MAX_DEPTH} levels deep (arrays and tables)"


def test_a_deeply_nested_replay_record_fails_alone(tmp_path: Path, config: Path) -> None:
    records = tmp_path / "r.jsonl"
    good = encode_record(Message("up", "a", {"n": 1}, seq=1))
    deep = b'{"connection":"up","key":1,"seq":2,"received_at":1,"fields":{},"body":'
    records.write_bytes(good + deep + b"[" * 100_000 + b"]" * 100_000 + b"}\n" + good)
    result = run("replay", "-c", str(config), str(records))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    assert f"{records}:2: nested too deeply" in result.stderr
    assert "3 read, 2 handled, 0 dead-lettered again, 1 failed" in result.stderr


# --- not a regular file --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "schema", "test", "status", "replay", "run"])
def test_a_fifo_as_the_config_is_refused_not_waited_on(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    args = {
        "test": ["test", "-c", str(fifo), str(tmp_path / "t.toml")],
        "replay": ["replay", "-c", str(fifo), str(tmp_path / "r.jsonl")],
    }.get(command, [command, "-c", str(fifo)])
    line = one_line(run(*args, timeout=20), 78)
    assert line.endswith("a FIFO (named pipe), not a regular file"), line


def test_a_fifo_or_a_folder_as_the_tests_file_is_refused(tmp_path: Path, config: Path) -> None:
    fifo = tmp_path / "t.toml"
    os.mkfifo(fifo)
    line = one_line(run("test", "-c", str(config), str(fifo), timeout=20), 78)
    assert line == (
        f"wsroute: {fifo}: cannot read tests file {fifo}: a FIFO (named pipe), not a regular file"
    )
    line = one_line(run("test", "-c", str(config), str(tmp_path), timeout=20), 78)
    assert line.endswith("a folder, not a regular file")


@pytest.mark.parametrize("what", ["fifo", "/dev/zero", "folder"])
def test_replay_refuses_what_is_not_a_file(tmp_path: Path, config: Path, what: str) -> None:
    target = {"fifo": tmp_path / "r.jsonl", "/dev/zero": Path("/dev/zero"), "folder": tmp_path}
    if what == "fifo":
        os.mkfifo(target[what])
    kind = {"fifo": "a FIFO (named pipe)", "/dev/zero": "a device", "folder": "a folder"}
    line = one_line(run("replay", "-c", str(config), str(target[what]), timeout=20), 66)
    assert line == f"wsroute: cannot read {target[what]}: {kind[what]}, not a regular file"


@pytest.mark.parametrize("reference", ["file", "credential"])
@pytest.mark.parametrize("what", ["fifo", "/dev/zero"])
def test_a_reference_to_a_fifo_or_a_device_is_refused(
    tmp_path: Path, config: Path, reference: str, what: str
) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    if what == "fifo":
        os.mkfifo(credentials / "token")
        name = str(credentials / "token") if reference == "file" else "token"
    else:
        (credentials / "token").symlink_to("/dev/zero")
        name = "/dev/zero" if reference == "file" else "token"
    text = config.read_text().replace(
        'url = "ws://127.0.0.1:1/"',
        f'url = "ws://127.0.0.1:1/"\nheaders = {{ X-Token = "${{{reference}:{name}}}" }}',
    )
    config.write_text(text)
    result = subprocess.run(
        [WSROUTE, "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=20,
        env=dict(os.environ, CREDENTIALS_DIRECTORY=str(credentials)),
        check=False,
    )
    line = one_line(result, 78)
    kind = "a FIFO (named pipe)" if what == "fifo" else "a device"
    assert f"{kind}, not a regular file" in line
    assert "connections.up.headers.X-Token" in line


# --- size ----------------------------------------------------------------------------------


def test_a_huge_config_file_is_refused_unread(tmp_path: Path, config: Path) -> None:
    # A spawned process's peak RSS starts at its parent's (the kernel keeps the
    # high-water mark across exec): measure against a small config's run.
    _, _, idle = peak_rss(["check", "-c", str(config)], tmp_path)
    huge = tmp_path / "huge.toml"
    with open(huge, "wb") as fh:
        fh.truncate(8 * 2**30)  # sparse: reading it would take 8 GiB
    rc, stderr, peak = peak_rss(["check", "-c", str(huge)], tmp_path)
    assert rc == 78, stderr
    assert stderr.strip() == (
        f"wsroute: {huge}: cannot read config file {huge}: "
        f"larger than the limit of {MAX_CONFIG_BYTES // MiB} MiB"
    )
    assert peak - idle < 32 * MiB


def test_a_huge_file_reference_is_refused_within_its_bound(tmp_path: Path, config: Path) -> None:
    baseline_rc, stderr, idle = peak_rss(["check", "-c", str(config)], tmp_path)
    assert baseline_rc == 0, stderr
    sparse = tmp_path / "token"
    with open(sparse, "wb") as fh:
        fh.truncate(8 * 2**30)
    just_over = tmp_path / "over"
    just_over.write_bytes(b"x" * (MAX_VALUE_FILE_BYTES + 1))
    for target in (sparse, just_over):
        config.write_text(
            BASE.format(folder=tmp_path).replace(
                'url = "ws://127.0.0.1:1/"',
                f'url = "ws://127.0.0.1:1/"\nheaders = {{ X-Token = "${{file:{target}}}" }}',
            )
        )
        rc, stderr, peak = peak_rss(["check", "-c", str(config)], tmp_path)
        assert rc == 78, stderr
        assert "larger than the limit of 1 MiB" in stderr
        assert len(stderr.strip().splitlines()) == 1, stderr
        assert peak - idle <= MAX_VALUE_FILE_BYTES + 32 * MiB


def test_a_file_reference_at_the_limit_is_read(tmp_path: Path, config: Path) -> None:
    token = tmp_path / "token"
    token.write_bytes(b"t" * MAX_VALUE_FILE_BYTES)
    config.write_text(
        config.read_text().replace(
            'url = "ws://127.0.0.1:1/"',
            f'url = "ws://127.0.0.1:1/"\nheaders = {{ X-Token = "${{file:{token}}}" }}',
        )
    )
    result = run("check", "-c", str(config))
    assert result.returncode == 0, result.stderr


def test_replay_skips_a_record_over_the_limit_within_its_bound(
    tmp_path: Path, config: Path
) -> None:
    good = encode_record(Message("up", "a", {"n": 1}, seq=1))
    small = tmp_path / "small.jsonl"
    small.write_bytes(good)
    rc, stderr, idle = peak_rss(["replay", "-c", str(config), str(small)], tmp_path)
    assert rc == 0, stderr
    records = tmp_path / "r.jsonl"
    with open(records, "wb") as fh:
        fh.write(good)
        fh.write(b'{"connection": "up", "body": "')
        block = b"x" * MiB
        for _ in range(MAX_RECORD_BYTES // MiB + 40):  # 40 MiB past the limit, then more
            fh.write(block)
        fh.write(b'"}\n')
        fh.write(good)
    rc, stderr, peak = peak_rss(["replay", "-c", str(config), str(records)], tmp_path)
    assert "Traceback" not in stderr, stderr
    assert rc == 1, stderr
    assert (
        f"wsroute: {records}:2: record larger than the limit of {MAX_RECORD_BYTES // MiB} MiB"
        in stderr
    )
    assert "3 read, 2 handled, 0 dead-lettered again, 1 failed" in stderr
    assert peak - idle <= MAX_RECORD_BYTES + 32 * MiB


# --- binary --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "status", "test", "schema"])
def test_a_binary_config_is_named_as_such(tmp_path: Path, command: str) -> None:
    binary = tmp_path / "wsroute.toml"
    binary.write_bytes(b'[daemon]\nlog_level = "info"\n\x00\x01\xd0\xff\x7fELF')
    args = [command, "-c", str(binary)] + ([str(tmp_path / "t.toml")] if command == "test" else [])
    line = one_line(run(*args), 78)
    assert line.startswith(f"wsroute: {binary}: a binary file, not UTF-8 text (byte "), line


def test_a_binary_tests_file_is_named_as_such(tmp_path: Path, config: Path) -> None:
    tests = tmp_path / "t.toml"
    tests.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\xff")
    line = one_line(run("test", "-c", str(config), str(tests)), 78)
    assert line.startswith(f"wsroute: {tests}: a binary file, not UTF-8 text"), line


# --- ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["top", "--interval", "inf"], "argument --interval: expected seconds from 0.1 to 3600"),
        (["top", "--interval", "nan"], "argument --interval: expected seconds from 0.1 to 3600"),
        (["top", "--interval", "0"], "argument --interval: expected seconds from 0.1 to 3600"),
        (["top", "--interval", "1e400"], "argument --interval: expected seconds from 0.1"),
        (["tap", "--limit", "-1"], "argument --limit: expected a number of records from 1"),
        (["tap", "--limit", "0"], "argument --limit: expected a number of records from 1"),
        (["demo", "--duration", "inf"], "argument --duration: expected seconds from 0 to 86400"),
        (["demo", "--duration", "-1"], "argument --duration: expected seconds from 0 to 86400"),
    ],
)
def test_numeric_options_have_a_range(args: list[str], words: str) -> None:
    result = run(*args, "--api", "unix:/nonexistent") if args[0] != "demo" else run(*args)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2
    assert words in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("edit", "path", "message"),
    [
        ('[routes.nan]\nkey = nan\nhandlers = ["archive"]', "routes.nan.key", "a finite number"),
        (
            '[routes.inf]\nkey = [1, inf]\nhandlers = ["archive"]',
            "routes.inf.key[1]",
            "a finite number",
        ),
        (
            '[handlers.archive.batch]\nwait = "99999999999999999999h"',
            "handlers.archive.batch.wait",
            "a duration of at most 8760h (365 days)",
        ),
        (
            '[handlers.archive.batch]\nwait = "9999999999999999999999999999999999999999999999h"',
            "handlers.archive.batch.wait",
            "a duration of at most 8760h (365 days)",
        ),
        (
            '[handlers.more]\nplugin = "log"\nqueue_bytes = "2000GiB"',
            "handlers.more.queue_bytes",
            "a size of at most 1024GiB",
        ),
        (
            '[handlers.more]\nplugin = "log"\nqueue = 99999999999999999999999',
            "handlers.more.queue",
            "a 64-bit integer",
        ),
    ],
)
def test_absurd_numbers_in_the_config_are_refused_at_their_key(
    config: Path, edit: str, path: str, message: str
) -> None:
    config.write_text(config.read_text() + "\n" + edit + "\n")
    result = run("check", "-c", str(config))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 78
    assert any(f"{path}: expected {message}" in line for line in result.stderr.splitlines()), (
        result.stderr
    )


@pytest.mark.parametrize(
    ("key", "value", "most"),
    [
        ("queue", "10000001", "10000000"),
        ("concurrency", "1001", "1000"),
        ("retries", "1001", "1000"),
        ("batch", "{ max = 100001 }", "100000"),
    ],
)
def test_counts_have_an_upper_bound(config: Path, key: str, value: str, most: str) -> None:
    config.write_text(config.read_text() + f'\n[handlers.more]\nplugin = "log"\n{key} = {value}\n')
    result = run("check", "-c", str(config))
    assert result.returncode == 78, result.stderr
    path = "handlers.more.batch.max" if key == "batch" else f"handlers.more.{key}"
    assert f"{path}: must be at most {most}, got" in result.stderr, result.stderr


def test_the_longest_duration_is_accepted(config: Path) -> None:
    config.write_text(config.read_text() + '\n[handlers.archive.batch]\nwait = "8760h"\n')
    result = run("check", "-c", str(config))
    assert result.returncode == 0, result.stderr


# --- replay's handler ----------------------------------------------------------------------


def test_replay_never_routes_a_record_of_an_unknown_handler(tmp_path: Path, config: Path) -> None:
    records = tmp_path / "r.jsonl"
    gone = Message("up", "a", {"n": 1}, seq=1, dead_letter=DeadLetter("handler_error", "gone"))
    known = Message("up", "a", {"n": 2}, seq=2, dead_letter=DeadLetter("handler_error", "archive"))
    records.write_bytes(encode_record(gone) + encode_record(known))
    result = run("replay", "-c", str(config), str(records))
    assert result.returncode == 1, result.stderr
    assert (
        f'wsroute: {records}:1: no handler named "gone" in this config: the record goes to '
        "the handler that dead-lettered it only (--through-routes routes it instead)"
    ) in result.stderr
    assert "2 read, 1 handled, 0 dead-lettered again, 1 failed" in result.stderr
    replayed = (tmp_path / "replayed.jsonl").read_text().splitlines()
    assert len(replayed) == 1
    assert '"n":2' in replayed[0].replace(" ", "")
    # --through-routes: routed like a fresh message, so the archive gets both
    result = run("replay", "-c", str(config), str(records), "--through-routes")
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "replayed.jsonl").read_text().splitlines()) == 3


# --- two Authorization sources -------------------------------------------------------------


@pytest.mark.parametrize("header", ["Authorization", "authorization"])
def test_userinfo_and_an_authorization_header_are_a_config_error(config: Path, header: str) -> None:
    config.write_text(
        config.read_text().replace(
            'url = "ws://127.0.0.1:1/"',
            f'url = "ws://user:pw@127.0.0.1:1/"\nheaders = {{ {header} = "Bearer t" }}',
        )
    )
    line = one_line(run("check", "-c", str(config)), 78)
    assert "connections.up.headers: Authorization is set twice" in line
    assert "pw" not in line
    assert "Bearer" not in line
