"""The tests file of ``wsroute test``: ``[[tests]]`` tables, typed and checked against a config.

Invariant: a tests file becomes a list of :class:`TestCase` or one
:class:`~wsroute.exceptions.ConfigError` listing every problem, each at its
key path (``tests[2].expect.handlers[0]``) and line, exactly like a config
file. A frame is written like an ``on_connect`` step (the same
``json``/``struct``/``text``/``raw`` fields and the same encoding); names a
test refers to (its connection, handlers, routes) must exist in the config it
runs against. Nothing here decodes or routes: that is :mod:`wsroute.configtest`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ConfigError, ConfigIssue
from ..inputs import MAX_CONFIG_BYTES, InputRefused, decode_text, read_file
from ..plugin import Key
from ..validate import INVALID, convert, did_you_mean, join_path
from ..validate import _show as show_value
from .issues import finish
from .lines import line_in, line_index
from .load import parse_toml
from .schema import Config, _doc, _FrameFields

__all__ = ["ExpectTable", "FrameTable", "TestCase", "load_cases"]


@dataclass
class FrameTable(_FrameFields):
    """``frame = {...}``: the frame the upstream sends, written like an ``on_connect`` step."""

    def __post_init__(self) -> None:
        kinds = self._frame_kinds()
        if len(kinds) != 1:
            raise ValueError(
                "a frame is exactly one of: json, struct (+ json), text, raw"
                + (f"; got {' and '.join(kinds)}" if kinds else "")
            )


@dataclass
class ExpectTable:
    """``expect = {...}``: what must happen to the frame. Keys left out are not checked."""

    key: Key = _doc("The decoded route key.", default=None)
    fields: dict[str, Any] | None = _doc("The decoded fields (a struct header's).", default=None)
    body: Any = _doc("The decoded body.", default=None)
    subset: bool = _doc(
        "Compare fields and body as subsets: every key given must be there with this "
        "value (tables compared the same way inside), other keys are allowed.",
        default=False,
    )
    handlers: list[str] | None = _doc(
        "Exactly these handlers receive it, in fan-out order (file order of the routes).",
        default=None,
    )
    routes: list[str] | None = _doc("Exactly these routes match it, in file order.", default=None)
    unmatched: bool | None = _doc(
        "true: no route matches (it goes to [daemon] unmatched); false: some route does.",
        default=None,
    )
    decode_error: bool | str | None = _doc(
        "true: the codec refuses the frame; a string: and its error contains this text.",
        default=None,
    )
    dead_letter: str | None = _doc(
        "With decode_error: the handler the frame is dead-lettered to.", default=None
    )

    def __post_init__(self) -> None:
        decoded = [
            name
            for name in ("key", "fields", "body", "handlers", "routes", "unmatched")
            if getattr(self, name) is not None
        ]
        if self.decode_error is False:
            raise ValueError("decode_error: leave it out, or say true (or the error's text)")
        if self.decode_error is not None and decoded:
            raise ValueError(
                f"decode_error cannot be combined with {', '.join(decoded)}: "
                "an undecodable frame has no key, body or routes"
            )
        if self.dead_letter is not None and self.decode_error is None:
            raise ValueError("dead_letter: only for an expected decode_error")
        if self.unmatched and self.handlers:
            raise ValueError("unmatched: true, but handlers names some: say one or the other")
        if self.decode_error is None and not decoded:
            raise ValueError(
                "say what must happen: key, fields, body, handlers, routes, unmatched "
                "or decode_error"
            )


@dataclass
class TestCase:
    """One ``[[tests]]`` table: a frame on a connection, and what must happen to it."""

    __test__ = False  # not a pytest class

    name: str = _doc("What the test shows, printed on its result line.")
    connection: str = _doc("The connection (or source) that reads the frame.")
    frame: FrameTable = _doc("The frame: json | struct (+ json) | text | raw.")
    expect: ExpectTable = _doc("What must happen to it.")
    start: bool = _doc(
        "Also hand the message to the handlers it reaches: each is built from its "
        "[handlers.NAME] table, started, given the message (handle_batch with this one "
        "message when its batch key is set) within its timeout, and stopped; an error "
        "fails the test. They do what they do in the daemon (a jsonl handler appends to "
        "its file, a sink sends); what they send to a connection is only recorded.",
        default=False,
    )
    line: int | None = field(default=None, init=False, compare=False)
    """Where the ``[[tests]]`` table starts in its file."""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("name must not be empty")


def load_cases(path: str, config: Config) -> list[TestCase]:
    """Read a tests file and check it against ``config``; :class:`ConfigError` lists all."""
    try:
        data = read_file(path, MAX_CONFIG_BYTES)
    except InputRefused as exc:
        raise ConfigError(
            [ConfigIssue("", f"cannot read tests file {path}: {exc}")], source=path
        ) from None
    try:
        text = decode_text(data)
    except InputRefused as exc:
        raise ConfigError([ConfigIssue("", str(exc), line=exc.line)], source=path) from None
    return loads_cases(text, config, path=path)


def loads_cases(text: str, config: Config, *, path: str | None = None) -> list[TestCase]:
    """:func:`load_cases` for text already read."""
    document, issue = parse_toml(text)
    if issue is not None:
        raise ConfigError([issue], source=path)
    issues: list[ConfigIssue] = []
    for key in document:
        if key != "tests":
            issues.append(
                ConfigIssue(join_path("", key), f"unknown key{did_you_mean(key, ['tests'])}")
            )
    tables = document.get("tests", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        issues.append(ConfigIssue("tests", "expected [[tests]] tables"))
        tables = []
    elif not tables and not issues:
        issues.append(ConfigIssue("", "no [[tests]] in the file"))
    cases: list[TestCase] = []
    seen: dict[str, str] = {}
    for index, table in enumerate(tables):
        where = join_path("tests", index)
        case = convert(TestCase, table, where, issues)
        _check_names(table, config, where, issues)
        if case is INVALID:
            continue
        if case.name in seen:
            issues.append(
                ConfigIssue(join_path(where, "name"), f"{show_value(case.name)} is used twice")
            )
        seen[case.name] = where
        cases.append(case)
    if issues:
        raise ConfigError(finish(issues, text, ()), source=path)
    starts = line_index(text)
    for number, case in enumerate(cases):
        case.line = line_in(starts, join_path("tests", number))
    return cases


def _check_names(
    table: dict[str, Any], config: Config, where: str, issues: list[ConfigIssue]
) -> None:
    """The connection, handlers and routes a test names must exist in the config."""
    connections = [*config.connections, *config.sources]
    connection = table.get("connection")
    if isinstance(connection, str) and connection not in connections:
        issues.append(
            ConfigIssue(
                join_path(where, "connection"),
                f"no connection or source named {show_value(connection)} in the config"
                f"{did_you_mean(connection, connections)}",
            )
        )
    expect = table.get("expect")
    if not isinstance(expect, dict):
        return
    base = join_path(where, "expect")
    for key, known, what in (
        ("handlers", list(config.handlers), "handler"),
        ("routes", list(config.routes), "route"),
    ):
        names = expect.get(key)
        if not isinstance(names, list):
            continue
        for i, name in enumerate(names):
            if isinstance(name, str) and name not in known:
                issues.append(
                    ConfigIssue(
                        join_path(join_path(base, key), i),
                        f"no {what} named {show_value(name)}{did_you_mean(name, known)}",
                    )
                )
    letter = expect.get("dead_letter")
    if isinstance(letter, str) and letter not in config.handlers:
        issues.append(
            ConfigIssue(
                join_path(base, "dead_letter"),
                f"no handler named {show_value(letter)}{did_you_mean(letter, config.handlers)}",
            )
        )
