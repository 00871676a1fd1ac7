"""`wsroute replay` accounts for every record, undecodable frames included.

The dead letters are real: the daemon runs against a local WebSocket server
that sends a decodable frame and two it cannot decode (a binary frame whose
JSON body is cut by the wrong header, a text frame of half a JSON object), and
its jsonl dead-letter handler writes them. `wsroute replay` then runs as the
operator runs it, in a subprocess.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

from wsroute import DeadLetter, Message
from wsroute.records import encode_record
from wsroute.testing import ScriptedUpstream, run_daemon

WSROUTE = str(Path(sys.executable).with_name("wsroute"))

GOOD = b'\x01\x00\x00\x00{"n": 1}'
BINARY = b'\x02\x00{"n": 7}'  # an int16 opcode: "<i" eats '{"' and leaves no JSON
TEXT = '{"half": '

DAEMON = """
[daemon]
log_level = "warning"
dead_letter = "dlq"

[connections.up]
url = "${WSROUTE_UPSTREAM}"
codec = "exchange"

[codecs.exchange]
type = "struct"
header = "<i"
fields = ["opcode"]

[routes.all]
handlers = ["archive"]

[handlers.archive]
plugin = "jsonl"
path = "${WSROUTE_TMP}/archive.jsonl"

[handlers.dlq]
plugin = "jsonl"
path = "${WSROUTE_TMP}/dead.jsonl"
"""

# The config replay runs with: the codec as given, a fresh archive and dead-letter file.
REPLAY = """
[daemon]
log_level = "warning"
{dead_letter}

[connections.up]
url = "ws://127.0.0.1:1/"
codec = "exchange"

[codecs.exchange]
type = "struct"
header = "{header}"
fields = ["opcode"]
text = "{text}"

[routes.all]
handlers = ["archive"]

[handlers.archive]
plugin = "jsonl"
path = "{folder}/replayed.jsonl"

[handlers.dlq]
plugin = "jsonl"
path = "{folder}/dead-again.jsonl"
"""


def dead_letters(tmp_path: Path) -> Path:
    """Run the daemon until it dead-lettered both undecodable frames; their file."""

    async def main() -> None:
        upstream = ScriptedUpstream(frames=[GOOD, BINARY, TEXT])
        async with run_daemon(DAEMON, upstream=upstream, tmp_path=tmp_path) as daemon:
            await daemon.wait_until(
                lambda: (
                    daemon.stats("dlq")["handled"] == 2 and daemon.stats("archive")["handled"] == 1
                )
            )

    anyio.run(main)
    dead = tmp_path / "dead.jsonl"
    records = lines(dead)
    assert [r["reason"] for r in records] == ["decode_error", "decode_error"]
    return dead


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def replay(
    tmp_path: Path,
    dead: Path,
    *extra: str,
    header: str = "<i",
    text: str = "json",
    dead_letter: bool = True,
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "replay.toml"
    config.write_text(
        REPLAY.format(
            folder=tmp_path,
            header=header,
            text=text,
            dead_letter='dead_letter = "dlq"' if dead_letter else "",
        )
    )
    return run_replay(config, dead, *extra)


def run_replay(config: Path, dead: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WSROUTE, "replay", "-c", str(config), str(dead), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )


def summary(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("wsroute: replay ")]
    return line.split(": ", 2)[2]


def test_a_decode_error_record_holds_the_frame_byte_for_byte(tmp_path: Path) -> None:
    binary, text = lines(dead_letters(tmp_path))
    assert binary["body_encoding"] == "base64"
    assert base64.b64decode(binary["body"]) == BINARY
    assert text["body"] == TEXT
    assert "body_encoding" not in text


def test_a_fixed_codec_decodes_the_exact_frames_and_they_are_handled(tmp_path: Path) -> None:
    dead = dead_letters(tmp_path)
    result = replay(tmp_path, dead, header="<h", text="text")
    assert result.returncode == 0, result.stderr
    assert summary(result) == "2 read, 2 handled, 0 dead-lettered again, 0 failed"
    binary, text = lines(tmp_path / "replayed.jsonl")
    assert (binary["key"], binary["fields"], binary["body"]) == (2, {"opcode": 2}, {"n": 7})
    assert binary["seq"] == 2  # the frame's own seq, kept
    assert text["body"] == TEXT
    assert "reason" not in binary
    assert lines(tmp_path / "dead-again.jsonl") == []


def test_records_still_undecodable_are_dead_lettered_again_and_exit_1(tmp_path: Path) -> None:
    dead = dead_letters(tmp_path)
    result = replay(tmp_path, dead)
    assert result.returncode == 1, result.stderr
    assert summary(result) == "2 read, 0 handled, 2 dead-lettered again, 0 failed"
    again = lines(tmp_path / "dead-again.jsonl")
    assert [r["reason"] for r in again] == ["decode_error", "decode_error"]
    assert [r["seq"] for r in again] == [2, 3]
    assert base64.b64decode(again[0]["body"]) == BINARY  # still the exact frame
    assert again[1]["body"] == TEXT
    assert lines(tmp_path / "replayed.jsonl") == []
    # ... and replaying the new file with the fixed codec reads them.
    fixed = replay(tmp_path, tmp_path / "dead-again.jsonl", header="<h", text="text")
    assert fixed.returncode == 0, fixed.stderr


def test_failed_records_go_to_the_failed_file_instead(tmp_path: Path) -> None:
    dead = dead_letters(tmp_path)
    failed = tmp_path / "failed.jsonl"
    failed.write_text(encode_record(Message("up", 9, {"earlier": True})).decode())
    result = replay(tmp_path, dead, "--failed", str(failed))
    assert result.returncode == 1, result.stderr
    assert summary(result) == (f"2 read, 0 handled, 2 dead-lettered again (to {failed}), 0 failed")
    earlier, binary, text = lines(failed)  # appended, in the shape the jsonl handler writes
    assert earlier["body"] == {"earlier": True}
    assert (binary["reason"], base64.b64decode(binary["body"])) == ("decode_error", BINARY)
    assert (text["reason"], text["body"]) == ("decode_error", TEXT)
    assert lines(tmp_path / "dead-again.jsonl") == []  # not passed to the dead-letter handler


def test_without_a_dead_letter_handler_the_records_count_as_failed(tmp_path: Path) -> None:
    dead = dead_letters(tmp_path)
    result = replay(tmp_path, dead, dead_letter=False)
    assert result.returncode == 1, result.stderr
    assert summary(result) == "2 read, 0 handled, 0 dead-lettered again, 2 failed"
    assert result.stderr.count('"message_lost"') == 2


def test_a_record_a_handler_fails_on_again_is_dead_lettered_again(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    letter = Message("up", 1, {"n": 1}, seq=4, dead_letter=DeadLetter("handler_error", "flaky"))
    dead.write_bytes(encode_record(letter))
    config = tmp_path / "replay.toml"
    config.write_text(
        f"""
[daemon]
log_level = "warning"
dead_letter = "dlq"

[connections.up]
url = "ws://127.0.0.1:1/"
codec = "json"

[routes.all]
handlers = ["flaky", "archive"]

[handlers.flaky]
plugin = "wsroute.testing:Recorder"
fail_first = 10
retries = 0

[handlers.archive]
plugin = "jsonl"
path = "{tmp_path}/replayed.jsonl"

[handlers.dlq]
plugin = "jsonl"
path = "{tmp_path}/dead-again.jsonl"
"""
    )
    result = run_replay(config, dead)
    assert result.returncode == 1, result.stderr
    assert summary(result) == "1 read, 0 handled, 1 dead-lettered again, 0 failed"
    (again,) = lines(tmp_path / "dead-again.jsonl")
    assert (again["reason"], again["handler"], again["body"]) == (
        "handler_error",
        "flaky",
        {"n": 1},
    )
    assert lines(tmp_path / "replayed.jsonl") == []  # sent back to the handler that failed only


def test_a_malformed_line_is_named_counted_and_skipped(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    good = encode_record(Message("up", 1, {"n": 1}, seq=1))
    dead.write_bytes(good + b'{"connection": "up", "bo\n' + good)
    result = replay(tmp_path, dead)
    assert result.returncode == 1, result.stderr
    assert f"wsroute: {dead}:2: not a JSON line" in result.stderr
    assert summary(result) == "3 read, 2 handled, 0 dead-lettered again, 1 failed"
    assert len(lines(tmp_path / "replayed.jsonl")) == 2


def test_a_missing_input_file_is_one_line_and_not_zero(tmp_path: Path) -> None:
    result = replay(tmp_path, tmp_path / "nothing.jsonl")
    assert result.returncode == 66
    assert result.stderr.splitlines() == [
        f"wsroute: cannot read {tmp_path / 'nothing.jsonl'}: No such file or directory"
    ]
