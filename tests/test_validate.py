"""Typed conversion of TOML values: every annotation kind, every error with its key path."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from wsroute.exceptions import ConfigError, ConfigIssue
from wsroute.plugin import Duration, OptionError, Size
from wsroute.validate import (
    INVALID,
    FieldDoc,
    convert,
    convert_or_raise,
    describe_type,
    did_you_mean,
    field_docs,
    format_duration,
    format_size,
    join_path,
    option_issue,
    parse_duration,
    parse_size,
)


def run(tp: Any, value: Any, path: str = "k") -> tuple[Any, list[ConfigIssue]]:
    issues: list[ConfigIssue] = []
    return convert(tp, value, path, issues), issues


def ok(tp: Any, value: Any) -> Any:
    result, issues = run(tp, value)
    assert issues == []
    return result


def fails(tp: Any, value: Any, path: str = "k") -> dict[str, str]:
    result, issues = run(tp, value, path)
    assert result is INVALID
    assert issues
    return {issue.path: issue.message for issue in issues}


# --- durations and sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1m30s", 90.0),
        ("1m 30s", 90.0),
        (" 2s ", 2.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", " ", "30", "-1s", "1d", "s", "1s1", "1.s", "fast", "1 h x"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(text)}$"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512B", 512),
        ("64KiB", 65536),
        ("1MiB", 2**20),
        ("1GiB", 2**30),
        ("1.5KiB", 1536),
        ("1KB", 1000),
        ("1 MB", 10**6),
        ("2GB", 2 * 10**9),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1", "-1B", "1mib", "1 XiB", "big"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(text)}$"):
        parse_size(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (30, "30s"),
        (90, "90s"),
        (120, "2m"),
        (7200, "2h"),
    ],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0B"), (100, "100B"), (1536, "1536B"), (65536, "64KiB"), (2**20, "1MiB")]
)
def test_format_size_round_trips(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


def test_convert_duration() -> None:
    assert ok(Duration, "1m") == 60.0
    assert ok(Duration, 0) == 0.0
    assert ok(Duration, 0.0) == 0.0
    # The example error of the README and docs/config.md, word for word.
    assert fails(Duration, -1, "connections.exchange.reconnect.max") == {
        "connections.exchange.reconnect.max": 'expected a duration like "30s", got -1'
    }
    assert fails(Duration, 30) == {"k": 'expected a duration like "30s", got 30'}
    assert fails(Duration, False) == {"k": 'expected a duration like "30s", got false'}


def test_convert_size() -> None:
    assert ok(Size, "1MiB") == 2**20
    assert ok(Size, 4096) == 4096
    assert fails(Size, -1) == {"k": 'expected a size like "1MiB", got -1'}
    assert fails(Size, True) == {"k": 'expected a size like "1MiB", got true'}
    assert fails(Size, "1mb") == {"k": 'expected a size like "1MiB", got "1mb"'}


# --- scalars


def test_convert_scalars() -> None:
    assert ok(str, "a") == "a"
    assert ok(int, 3) == 3
    # A whole float is an integer, as JSON Schema's "integer" (the editor's check) says.
    assert ok(int, 3.0) == 3
    assert isinstance(ok(int, 3.0), int)
    assert ok(Size, 2048.0) == 2048
    assert ok(float, 3) == 3.0
    assert isinstance(ok(float, 3), float)
    assert ok(bool, False) is False
    assert ok(bytes, "02 00 00 00") == b"\x02\x00\x00\x00"
    assert ok(Any, {"x": [1]}) == {"x": [1]}


@pytest.mark.parametrize(
    ("tp", "value", "message"),
    [
        (str, 1, "expected a string, got 1"),
        (int, "1", 'expected an integer, got "1"'),
        (int, True, "expected an integer, got true"),
        (int, 1.5, "expected an integer, got 1.5"),
        (int, 1e30, "expected an integer, got 1e+30"),  # outside TOML's 64-bit integers
        (float, True, "expected a number, got true"),
        (bool, 1, "expected a boolean, got 1"),
        (bytes, "zz", 'expected hex bytes like "02 00 00 00", got "zz"'),
        (str, {"a": 1}, "expected a string, got a table"),
        (str, [1], "expected a string, got an array"),
    ],
)
def test_convert_scalar_errors(tp: Any, value: Any, message: str) -> None:
    assert fails(tp, value) == {"k": message}


def test_long_values_are_shortened_in_messages() -> None:
    (message,) = fails(int, "x" * 200).values()
    assert message == 'expected an integer, got "' + "x" * 56 + "..."


# --- Literal, unions, containers


def test_literal_with_did_you_mean() -> None:
    tp = Literal["block", "drop-oldest", "drop-newest"]
    assert ok(tp, "block") == "block"
    assert fails(tp, "drop-olds") == {
        "k": 'expected one of "block" | "drop-oldest" | "drop-newest", got "drop-olds" '
        '(did you mean "drop-oldest"?)'
    }
    assert fails(tp, "zzz") == {
        "k": 'expected one of "block" | "drop-oldest" | "drop-newest", got "zzz"'
    }


def test_literal_does_not_take_true_for_1() -> None:
    assert fails(Literal[1, 2], True) == {"k": "expected one of 1 | 2, got true"}


def test_optional_and_union() -> None:
    assert ok(str | None, "a") == "a"
    assert fails(str | None, 1) == {"k": "expected a string, got 1"}
    assert ok(int | str, "a") == "a"
    assert ok(int | str, 1) == 1
    assert fails(int | str, 1.5) == {"k": "expected integer | string, got 1.5"}


def test_union_prefers_the_first_arm_that_fits() -> None:
    key = str | int | float | bool
    assert ok(key, True) is True
    assert type(ok(key, 1)) is int
    assert type(ok(key, 1.5)) is float


def test_list_tuple_dict() -> None:
    assert ok(list[int], [1, 2]) == [1, 2]
    assert ok(tuple[int, ...], [1, 2]) == (1, 2)
    assert ok(dict[str, int], {"a": 1}) == {"a": 1}
    assert ok(list[Any], [1, "x"]) == [1, "x"]


def test_container_errors_name_every_bad_element() -> None:
    assert fails(list[int], [1, "x", True]) == {
        "k[1]": 'expected an integer, got "x"',
        "k[2]": "expected an integer, got true",
    }
    assert fails(dict[str, int], {"a": "1", "b c": 2.5}) == {
        "k.a": 'expected an integer, got "1"',
        'k."b c"': "expected an integer, got 2.5",
    }
    assert fails(list[int], "1") == {"k": 'expected an array of integer, got "1"'}
    assert fails(dict[str, int], [1]) == {"k": "expected a table of integer, got an array"}


# --- dataclasses


@dataclass
class Inner:
    """A nested table."""

    size: Size = field(default=Size(1024), metadata={"doc": "How big."})


@dataclass
class Outer:
    """A table with a required key, defaults, a nested table and a check."""

    name: str = field(metadata={"doc": "The name."})
    every: Duration = field(default=Duration(30.0), metadata={"doc": "How often."})
    mode: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.name == "bad":
            raise ValueError("name must not be bad")


def test_dataclass_conversion() -> None:
    value = ok(Outer, {"name": "x", "every": "5s", "tags": ["t"], "inner": {"size": "1KiB"}})
    assert value == Outer(name="x", every=Duration(5.0), tags=["t"], inner=Inner(Size(1024)))


def test_dataclass_reports_every_problem_at_once() -> None:
    assert fails(
        Outer, {"evry": "5s", "mode": "c", "inner": {"size": "huge", "extra": 1}}, "t"
    ) == {
        "t.evry": 'unknown key (did you mean "every"?)',
        "t.name": "missing required key",
        "t.mode": 'expected one of "a" | "b", got "c"',
        "t.inner.extra": "unknown key",
        "t.inner.size": 'expected a size like "1MiB", got "huge"',
    }


def test_dataclass_post_init_error_naming_a_field_is_reported_at_the_field() -> None:
    assert fails(Outer, {"name": "bad"}, "t") == {"t.name": "must not be bad"}


@dataclass
class Checked:
    limit: int = 1
    other: int = 0
    restart: Inner | None = None

    def __post_init__(self) -> None:
        if self.limit == 0:
            raise OptionError("limit", "must be above 0")
        if self.limit == -1:
            raise ValueError("limit: must not be negative")
        if self.limit == 2:
            raise OptionError("restart.size", "is too small for limit 2")
        if self.limit == 3:
            raise ValueError("restart.size must be 3 for limit 3")
        if self.limit == 4:
            raise ValueError("limit and other must not be 4 together")
        if self.limit == 5:
            raise ValueError("the combination is wrong")


def test_option_error_and_leading_field_names_give_the_key_path() -> None:
    assert fails(Checked, {"limit": 0}, "handlers.alarm") == {
        "handlers.alarm.limit": "must be above 0"
    }
    assert fails(Checked, {"limit": -1}, "h") == {"h.limit": "must not be negative"}
    assert fails(Checked, {"limit": 2}, "h") == {"h.restart.size": "is too small for limit 2"}
    assert fails(Checked, {"limit": 3}, "h") == {"h.restart.size": "must be 3 for limit 3"}
    # About two keys, or about none: left at the table.
    assert fails(Checked, {"limit": 4}, "h") == {"h": "limit and other must not be 4 together"}
    assert fails(Checked, {"limit": 5}, "h") == {"h": "the combination is wrong"}


def test_option_issue_of_an_error_raised_outside_a_dataclass() -> None:
    # A codec constructor's OptionError: the key path without a dataclass to look at.
    issue = option_issue(None, "codecs.x", OptionError("header", "bad format"))
    assert (issue.path, issue.message) == ("codecs.x.header", "bad format")
    assert option_issue(None, "codecs.x", ValueError("header bad")).path == "codecs.x"


def test_dataclass_needs_a_table() -> None:
    assert fails(Outer, "x", "t") == {"t": 'expected a table, got "x"'}


def test_convert_or_raise() -> None:
    assert convert_or_raise(Inner, {}) == Inner()
    with pytest.raises(ConfigError) as info:
        convert_or_raise(Outer, {"every": 1, "x": 2}, "t")
    assert [issue.path for issue in info.value.issues] == ["t.x", "t.name", "t.every"]


def test_unsupported_annotation_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="unsupported annotation"):
        convert(complex, 1, "k", [])


# --- helpers


@pytest.mark.parametrize(
    ("path", "key", "joined"),
    [
        ("", "a", "a"),
        ("a", "b", "a.b"),
        ("a", "b-c_1", "a.b-c_1"),
        ("a", "b c", 'a."b c"'),
        ("a", 'x"y', 'a."x\\"y"'),
        ("a", 0, "a[0]"),
        ("a[0]", "b", "a[0].b"),
    ],
)
def test_join_path(path: str, key: str | int, joined: str) -> None:
    assert join_path(path, key) == joined


def test_did_you_mean() -> None:
    assert did_you_mean("ping_intervall", ["ping_interval", "ping_timeout"]) == (
        ' (did you mean "ping_interval"?)'
    )
    assert did_you_mean("zzz", ["ping_interval"]) == ""


@pytest.mark.parametrize(
    ("tp", "text"),
    [
        (Duration, "duration"),
        (Size, "size"),
        (str | None, "string"),
        (list[str], "array of string"),
        (dict[str, int], "table of integer"),
        (Literal["a", "b"], '"a" | "b"'),
        (Inner, "table"),
        (bytes, "hex bytes"),
        (Any, "any"),
    ],
)
def test_describe_type(tp: Any, text: str) -> None:
    assert describe_type(tp) == text


def test_field_docs() -> None:
    docs = {doc.name: doc for doc in field_docs(Outer)}
    assert docs["name"] == FieldDoc("name", "string", None, "The name.", True)
    assert docs["every"] == FieldDoc("every", "duration", '"30s"', "How often.", False)
    assert docs["mode"].default == '"a"'
    assert docs["tags"].default == "[]"
    assert docs["inner"].default == "(table)"
    assert docs["limit"].default == "(none)"
    assert not docs["limit"].required
    assert list(field_docs(Inner)) == [FieldDoc("size", "size", '"1KiB"', "How big.", False)]
