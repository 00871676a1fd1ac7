"""The loader: TOML text in, a valid :class:`~wsroute.config.schema.Config` out, or every problem.

Invariant: :func:`load` / :func:`loads` either return a fully validated
config or raise one :class:`~wsroute.exceptions.ConfigError` listing every
problem at once, each at its dotted key path and, when it can be found, its
line. The passes: TOML syntax, ``${...}`` interpolation (its secrets
registered for masking before anything else can log them), top-level keys
and table names, the type of every value, names that refer to other tables.
The same text gives equal configs, which is how a reload finds what changed.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from ..exceptions import ConfigError, ConfigIssue
from ..inputs import (
    MAX_CONFIG_BYTES,
    InputRefused,
    decode_text,
    nested_too_deep,
    read_file,
    too_deep,
)
from ..interpolate import interpolate
from ..logging import register_secrets
from ..validate import INVALID, convert, did_you_mean, join_path
from ..validate import _show as show_value
from .issues import finish, without_follow_ups
from .lines import line_index
from .lint import warnings_of
from .schema import (
    DELIVERY_KEYS,
    NAMED_SECTIONS,
    SECTIONS,
    CodecSection,
    Config,
    ConnectionSection,
    DaemonSection,
    HandlerSection,
    RouteSection,
    SourceSection,
)
from .secret_values import resolved_secrets

_NAME = re.compile(r"[A-Za-z0-9_-]+")


def load(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raise :class:`ConfigError` listing every problem.

    ``environ`` is what ``${VAR}`` references read (default: ``os.environ``).
    Relative ``${file:...}`` paths start from the file's folder.
    """
    name = os.fspath(path)
    return loads(_read(name), path=name, environ=environ)


def load_partial(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> tuple[Config | None, list[ConfigIssue]]:
    """:func:`load` without raising: the valid part of the file, and its problems.

    For reporting every problem at once across phases: the plugin phase can
    still check the tables that passed this one. The config holds only the
    tables that converted (``None`` when not even ``[daemon]`` did, or the file
    cannot be read); it is never run. Reading errors are a :class:`ConfigError`.
    """
    name = os.fspath(path)
    text = _read(name)
    return _parse(text, name, environ)


def _read(name: str) -> str:
    try:
        data = read_file(name, MAX_CONFIG_BYTES)
    except InputRefused as exc:
        raise ConfigError(
            [ConfigIssue("", f"cannot read config file {name}: {exc}")], source=name
        ) from None
    try:
        return decode_text(data)
    except InputRefused as exc:
        raise ConfigError([ConfigIssue("", str(exc), line=exc.line)], source=name) from None


def loads(
    text: str, *, path: str | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate config text; raise :class:`ConfigError` listing every problem.

    ``path`` is only recorded (``Config.path``, ``ConfigError.source``); its
    folder is where relative ``${file:...}`` paths start. What is legal but suspicious
    ends up in ``Config.warnings``. Loading the same text twice gives equal
    configs (dataclass equality), which is how a reload finds what changed.
    """
    config, issues = _parse(text, path, environ)
    if issues or config is None:
        raise ConfigError(issues, source=path)
    config.warnings = finish(warnings_of(config), text, ())
    return config


def _parse(
    text: str, path: str | None, environ: Mapping[str, str] | None
) -> tuple[Config | None, list[ConfigIssue]]:
    """The config (partial when there are issues) and every issue, finished."""
    document, issue = parse_toml(text)
    if issue is not None:
        return None, [issue]
    base_dir = os.path.dirname(os.path.abspath(path)) if path else None
    expanded = interpolate(document, os.environ if environ is None else environ, base_dir=base_dir)
    register_secrets(resolved_secrets(expanded))
    build_issues: list[ConfigIssue] = []
    config = _build(expanded.document, build_issues)
    issues = expanded.issues + without_follow_ups(build_issues, expanded.failed)
    if config is not None:
        config.path = path
        config.lines = line_index(text)
    return config, finish(issues, text, expanded.expansions)


def parse_toml(text: str) -> tuple[dict[str, Any], ConfigIssue | None]:
    """The TOML document of ``text``, or the issue that stops it: a syntax error, or
    nesting deeper than :data:`~wsroute.inputs.MAX_DEPTH` (which nothing after the
    parser could walk safely)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return {}, _syntax_issue(exc, text)
    except RecursionError:  # deeper still than the check below: the parser ran out of stack
        return {}, ConfigIssue("", nested_too_deep())
    keys = too_deep(document)
    if keys is not None:
        path = ""
        for key in keys:
            path = join_path(path, key)
        return {}, ConfigIssue(path, nested_too_deep())
    return document, None


def _syntax_issue(exc: tomllib.TOMLDecodeError, text: str) -> ConfigIssue:
    message = str(exc)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if match:
        reason = message[: match.start()]
        return ConfigIssue(
            "", f"TOML syntax error at column {match.group(2)}: {reason}", line=int(match.group(1))
        )
    match = re.search(r"\s*\(at end of document\)$", message)
    if match:
        return ConfigIssue(
            "",
            f"TOML syntax error at the end of the file: {message[: match.start()]}",
            line=max(1, len(text.splitlines())),
        )
    return ConfigIssue("", f"TOML syntax error: {message}")


def _build(document: dict[str, Any], issues: list[ConfigIssue]) -> Config | None:
    """Types and references. With ``issues``, a partial config (``None`` if ``[daemon]`` failed)."""
    for key in document:
        if key not in SECTIONS:
            issues.append(
                ConfigIssue(join_path("", key), f"unknown key{did_you_mean(key, SECTIONS)}")
            )
    tables = {section: _named_tables(document, section, issues) for section in NAMED_SECTIONS}

    daemon = convert(DaemonSection, document.get("daemon", {}), "daemon", issues)
    connections = {
        name: convert(ConnectionSection, table, join_path("connections", name), issues)
        for name, table in tables["connections"].items()
    }
    codecs = {
        name: _codec_section(table, join_path("codecs", name), issues)
        for name, table in tables["codecs"].items()
    }
    routes = {
        name: convert(RouteSection, table, join_path("routes", name), issues)
        for name, table in tables["routes"].items()
    }
    handlers = {
        name: _handler_section(table, join_path("handlers", name), issues)
        for name, table in tables["handlers"].items()
    }
    sources = {
        name: _source_section(table, join_path("sources", name), issues)
        for name, table in tables["sources"].items()
    }
    _check_references(document, tables, issues)
    if daemon is INVALID:
        return None
    # With issues, the tables that converted, and a stand-in for each handler or source
    # whose own keys did not: the plugin phase checks their options too, so that a type
    # error in a delivery key hides no unknown option of the same table.
    for name, table in tables["handlers"].items():
        if handlers.get(name) is INVALID:
            handlers[name] = _stand_in(table, "plugin", HandlerSection, ())
    for name, table in tables["sources"].items():
        if sources.get(name) is INVALID:
            sources[name] = _stand_in(table, "type", SourceSection, ("codec",))
    return Config(
        daemon=daemon,
        connections=_valid(connections),
        codecs=_valid(codecs),
        routes=_valid(routes),
        handlers=_valid(handlers),
        sources=_valid(sources),
    )


def _stand_in(table: dict[str, Any], key: str, cls: type, kept: tuple[str, ...]) -> Any:
    """A handler or source section whose own keys failed: its plugin, its options and
    the defaults, for the plugin phase's issues only (a config with issues never runs).
    ``INVALID`` when not even the plugin's name is usable."""
    plugin = table.get(key)
    if not isinstance(plugin, str) or not plugin:
        return INVALID
    ours = {key, *(DELIVERY_KEYS if cls is HandlerSection else ("codec", "dead_letter"))}
    fields: dict[str, Any] = {
        k: v for k, v in table.items() if k in kept and isinstance(v, str) and v
    }
    fields["options"] = {k: v for k, v in table.items() if k not in ours}
    try:
        return cls(**{key: plugin}, **fields)
    except (TypeError, ValueError):
        return INVALID


def _valid(tables: dict[str, Any]) -> dict[str, Any]:
    return {name: table for name, table in tables.items() if table is not INVALID}


def _named_tables(
    document: dict[str, Any], section: str, issues: list[ConfigIssue]
) -> dict[str, dict[str, Any]]:
    """The ``[section.NAME]`` tables of one section, after checking their names."""
    raw = document.get(section, {})
    if not isinstance(raw, dict):
        issues.append(
            ConfigIssue(section, f"expected [{section}.NAME] tables, got {show_value(raw)}")
        )
        return {}
    tables: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        path = join_path(section, name)
        if name.startswith("$"):
            issues.append(ConfigIssue(path, 'names starting with "$" are reserved'))
        elif not _NAME.fullmatch(name):
            issues.append(ConfigIssue(path, 'invalid name: use only letters, digits, "_" and "-"'))
        if not isinstance(value, dict):
            issues.append(
                ConfigIssue(
                    path,
                    f"expected a table, got {show_value(value)} "
                    f"(each of {section} is a [{section}.NAME] table)",
                )
            )
            continue
        tables[name] = value
    return tables


def _codec_section(table: dict[str, Any], path: str, issues: list[ConfigIssue]) -> Any:
    # `type` picks the plugin; the plugin validates the rest when it is loaded.
    fields: dict[str, Any] = {"options": {k: v for k, v in table.items() if k != "type"}}
    if "type" in table:
        fields["type"] = table["type"]
    return convert(CodecSection, fields, path, issues)


def _handler_section(table: dict[str, Any], path: str, issues: list[ConfigIssue]) -> Any:
    # `plugin` and the delivery keys are the daemon's; the rest is the plugin's,
    # passed on untouched and validated against its Options when it is loaded.
    ours = ("plugin", *DELIVERY_KEYS)
    fields = {k: v for k, v in table.items() if k in ours}
    fields["options"] = {k: v for k, v in table.items() if k not in ours}
    batch = fields.get("batch")
    if isinstance(batch, int) and not isinstance(batch, bool):
        # `batch = N` was the redis sink's own option (entries per round trip) before
        # the daemon's batching took the key: say what to write now.
        del fields["batch"]
        issues.append(
            ConfigIssue(
                join_path(path, "batch"),
                f"expected a table, got {batch}: write batch = {{ max = {batch}, wait = "
                '"20ms" } (up to max messages per handle_batch() call)',
            )
        )
    return convert(HandlerSection, fields, path, issues)


def _source_section(table: dict[str, Any], path: str, issues: list[ConfigIssue]) -> Any:
    # `type`, `codec` and `dead_letter` are the daemon's; the rest is the plugin's.
    ours = ("type", "codec", "dead_letter")
    fields = {k: v for k, v in table.items() if k in ours}
    fields["options"] = {k: v for k, v in table.items() if k not in ours}
    return convert(SourceSection, fields, path, issues)


def _check_references(
    document: dict[str, Any],
    tables: dict[str, dict[str, dict[str, Any]]],
    issues: list[ConfigIssue],
) -> None:
    """Names that must exist. Runs on the raw tables so it reports even where types failed."""

    def names_in(section: str) -> list[str]:
        # Every name in the file counts, even one whose table is broken (reported already).
        raw = document.get(section)
        return list(raw) if isinstance(raw, dict) else []

    handlers = names_in("handlers")
    # Sources share the connection name space: a route's `connection` may name either.
    connections = names_in("connections") + names_in("sources")
    for name in names_in("sources"):
        if name in names_in("connections"):
            issues.append(
                ConfigIssue(
                    join_path("sources", name),
                    "a source cannot have the name of a connection (they share routes' names)",
                )
            )

    def need_handler(path: str, name: Any) -> None:
        if isinstance(name, str) and name not in handlers:
            issues.append(
                ConfigIssue(
                    path, f"no handler named {show_value(name)}{did_you_mean(name, handlers)}"
                )
            )

    daemon = document.get("daemon")
    if isinstance(daemon, dict):
        for key in ("unmatched", "dead_letter"):
            need_handler(join_path("daemon", key), daemon.get(key))
    for name, route in tables["routes"].items():
        path = join_path("routes", name)
        connection = route.get("connection")
        if isinstance(connection, str) and connection not in connections:
            issues.append(
                ConfigIssue(
                    join_path(path, "connection"),
                    f"no connection named {show_value(connection)}"
                    f"{did_you_mean(connection, connections)}",
                )
            )
        listed = route.get("handlers")
        if isinstance(listed, list):
            for i, handler in enumerate(listed):
                need_handler(join_path(join_path(path, "handlers"), i), handler)
    for name, source in tables["sources"].items():
        need_handler(
            join_path(join_path("sources", name), "dead_letter"), source.get("dead_letter")
        )
    for name, handler in tables["handlers"].items():
        path = join_path(join_path("handlers", name), "dead_letter")
        target = handler.get("dead_letter")
        if target == name:
            issues.append(ConfigIssue(path, "a handler cannot be its own dead letter"))
        else:
            need_handler(path, target)
