"""${...} interpolation: each form, each failure, and that no message carries a secret."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from wsroute.exceptions import ConfigError
from wsroute.interpolate import Expansion, expand, interpolate

SECRET = "hunter2-very-secret"


def one(value: str, environ: dict[str, str] | None = None, **kw: Any) -> str:
    """Expand a single value through interpolate(), asserting it succeeded."""
    result = interpolate({"k": value}, environ or {}, **kw)
    assert result.issues == []
    return str(result.document["k"])


def messages(value: str, environ: dict[str, str] | None = None, **kw: Any) -> list[str]:
    result = interpolate({"k": value}, environ or {}, **kw)
    assert result.issues, "expected the value to fail"
    assert all(issue.path == "k" for issue in result.issues)
    return [issue.message for issue in result.issues]


# --- environment variables


def test_variable_is_expanded_in_place() -> None:
    assert one("Bearer ${TOKEN}", {"TOKEN": "abc"}) == "Bearer abc"
    assert one("${A}${B}-${A}", {"A": "1", "B": "2"}) == "12-1"


def test_unset_variable_is_an_error_naming_it() -> None:
    (message,) = messages("Bearer ${EXCHANGE_TOKEN}")
    assert message.startswith("environment variable EXCHANGE_TOKEN is not set")
    assert "${EXCHANGE_TOKEN:-default}" in message


def test_variable_set_but_empty_gives_empty_string() -> None:
    assert one("[${EMPTY}]", {"EMPTY": ""}) == "[]"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "127.0.0.1"),
        ({"HOST": ""}, "127.0.0.1"),
        ({"HOST": "redis.local"}, "redis.local"),
    ],
)
def test_default_applies_when_unset_or_empty(environ: dict[str, str], expected: str) -> None:
    assert one("redis://${HOST:-127.0.0.1}:6379/0", environ) == f"redis://{expected}:6379/0"


def test_default_may_be_empty_and_is_literal() -> None:
    assert one("<${X:-}>") == "<>"
    assert one("${X:-a:-b $y}") == "a:-b $y"


def test_every_failing_reference_in_a_value_is_reported() -> None:
    assert len(messages("${A}/${B}")) == 2


# --- $$ and lone dollars


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("$$", "$"),
        ("cost: $$5", "cost: $5"),
        ("$${NOT_A_REF}", "${NOT_A_REF}"),
        ("$$$${X}", "$${X}"),
        ("$connected", "$connected"),
        ("a $ b", "a $ b"),
        ("ends with $", "ends with $"),
    ],
)
def test_dollar_escapes_and_literal_dollars(written: str, expected: str) -> None:
    assert one(written, {"X": "no"}) == expected


def test_escape_next_to_a_reference() -> None:
    assert one("$$${X}", {"X": "5"}) == "$5"


@pytest.mark.parametrize("written", ["${}", "${1X}", "${X-y}", "${ X }", "${X:=y}", "${env:X}"])
def test_invalid_reference_is_an_error_listing_the_forms(written: str) -> None:
    (message,) = messages(written)
    assert message.startswith(f'invalid reference "{written}"')
    assert "${VAR:-default}" in message
    assert "$$" in message


def test_unterminated_reference_is_an_error() -> None:
    (message,) = messages("abc ${X")
    assert message.startswith('unterminated "${"')


# --- ${file:...}


def test_file_contents_with_one_trailing_newline_stripped(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("abc\n")
    (tmp_path / "two").write_text("abc\n\n")
    (tmp_path / "crlf").write_bytes(b"abc\r\n")
    (tmp_path / "pem").write_text("-----BEGIN-----\nxyz\n-----END-----\n")
    assert one(f"Bearer ${{file:{tmp_path}/token}}") == "Bearer abc"
    assert one(f"${{file:{tmp_path}/two}}") == "abc\n"
    assert one(f"${{file:{tmp_path}/crlf}}") == "abc"
    assert one(f"${{file:{tmp_path}/pem}}") == "-----BEGIN-----\nxyz\n-----END-----"


def test_relative_file_path_starts_at_base_dir(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("abc")
    assert one("${file:token}", base_dir=str(tmp_path)) == "abc"


def test_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (message,) = messages(f"${{file:{tmp_path}/nope}}")
    assert message.startswith(f"cannot read ${{file:{tmp_path}/nope}}: ")
    assert "No such file or directory" in message


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    (message,) = messages(f"${{file:{tmp_path}}}")
    assert message.startswith("cannot read ${file:")


def test_file_must_be_utf8_text(tmp_path: Path) -> None:
    (tmp_path / "bin").write_bytes(b"\xff\xfe" + SECRET.encode())
    (message,) = messages(f"${{file:{tmp_path}/bin}}")
    assert message == f"${{file:{tmp_path}/bin}} is not UTF-8 text"


def test_file_needs_a_path() -> None:
    (message,) = messages("${file:}")
    assert "needs a path" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0)
    (message,) = messages(f"${{file:{secret}}}")
    assert "Permission denied" in message
    assert SECRET not in message


# --- ${credential:...}


def test_credential_is_read_from_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "exchange-token").write_text(SECRET + "\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert one("Bearer ${credential:exchange-token}", env) == f"Bearer {SECRET}"


def test_credential_without_credentials_directory() -> None:
    (message,) = messages("${credential:token}")
    assert message.startswith('cannot read credential "token": $CREDENTIALS_DIRECTORY is not set')
    assert "LoadCredential=token:" in message


def test_credential_directory_missing_names_both(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    (message,) = messages("${credential:token}", {"CREDENTIALS_DIRECTORY": str(missing)})
    assert '"token"' in message
    assert str(missing) in message


def test_credential_file_missing_names_both(tmp_path: Path) -> None:
    (message,) = messages("${credential:token}", {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert message.startswith(
        f'cannot read credential "token" from $CREDENTIALS_DIRECTORY {tmp_path}: '
    )
    assert str(tmp_path / "token") in message


@pytest.mark.parametrize("name", ["", "../etc/passwd", "a/b", ".."])
def test_credential_name_is_a_plain_file_name(name: str, tmp_path: Path) -> None:
    (message,) = messages(f"${{credential:{name}}}", {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert message.startswith(f'invalid credential name "{name}"')


# --- walking a document


def test_every_string_at_any_depth_is_expanded_and_keys_are_not() -> None:
    document = {
        "connections": {
            "x": {
                "url": "wss://${HOST}/",
                "headers": {"${HOST}": "${HOST}"},
                "subprotocols": ["a", "${HOST}"],
                "on_connect": [{"json": {"user": ["${HOST}", 1, True]}}],
                "ping_interval": 5,
            }
        }
    }
    result = interpolate(document, {"HOST": "h"})
    assert result.issues == []
    assert result.document == {
        "connections": {
            "x": {
                "url": "wss://h/",
                "headers": {"${HOST}": "h"},
                "subprotocols": ["a", "h"],
                "on_connect": [{"json": {"user": ["h", 1, True]}}],
                "ping_interval": 5,
            }
        }
    }


def test_the_input_document_is_not_changed() -> None:
    document = {"a": {"b": ["${X}"]}}
    before = copy.deepcopy(document)
    interpolate(document, {"X": "1"})
    assert document == before


def test_issue_paths_are_dotted_key_paths() -> None:
    document = {
        "connections": {"ex": {"on_connect": [{}, {"json": {"user": "${U}"}}]}},
        "handlers": {"a b": {"path": "${P}"}},
    }
    result = interpolate(document, {})
    assert [issue.path for issue in result.issues] == [
        "connections.ex.on_connect[1].json.user",
        'handlers."a b".path',
    ]


def test_failed_values_stay_as_written_and_are_listed() -> None:
    result = interpolate({"a": "${NOPE}", "b": "${X}"}, {"X": "1"})
    assert result.document == {"a": "${NOPE}", "b": "1"}
    assert result.failed == {"a": "${NOPE}"}


def test_expansions_record_what_was_substituted_where(tmp_path: Path) -> None:
    (tmp_path / "s").write_text(SECRET)
    result = interpolate(
        {"h": {"auth": f"Bearer ${{file:{tmp_path}/s}}"}, "plain": "x", "escaped": "$$"}, {}
    )
    assert result.expansions == [
        Expansion("h.auth", f"Bearer ${{file:{tmp_path}/s}}", f"Bearer {SECRET}", (SECRET,))
    ]
    # The secret stays out of the record's repr, which may end up in a log.
    assert SECRET not in repr(result.expansions)


def test_no_message_contains_a_secret(tmp_path: Path) -> None:
    (tmp_path / "s").write_text(SECRET)
    env = {"TOKEN": SECRET, "CREDENTIALS_DIRECTORY": str(tmp_path)}
    result = interpolate(
        {
            "a": f"${{TOKEN}} ${{file:{tmp_path}/s}} ${{credential:s}} ${{MISSING}}",
            "b": "${credential:nope} ${TOKEN}",
        },
        env,
    )
    assert len(result.issues) == 2
    for issue in result.issues:
        assert SECRET not in str(issue)


# --- expand()


def test_expand_returns_the_value_or_raises_config_error() -> None:
    assert expand("x${A}", {"A": "1"}) == "x1"
    with pytest.raises(ConfigError) as info:
        expand("${A}/${B}", {}, path="cli.url")
    assert [issue.path for issue in info.value.issues] == ["cli.url", "cli.url"]
