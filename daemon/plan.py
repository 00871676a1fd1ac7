"""Phase 1 of a start or reload: every plugin the config names resolved and validated.

:func:`plan` loads each codec, handler and source plugin, validates its
options with the same key-path errors as the core config, and checks what
needs plugins and config together (a source's dead letter, route keys a codec
can never produce). Nothing is started: ``wsroute check`` stops here (and runs
the preflight). Every problem is reported at once, at its key path and line
(an option a plugin's ``__post_init__`` or a codec's constructor names, at
that option: :func:`~wsroute.validate.option_issue`); each ``[codecs.NAME]``
table is checked once, used or not. :func:`plugin_issues` runs the same
checks on the valid part of a broken file; warnings are kept on the config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import (
    DELIVERY_KEYS,
    Config,
    HandlerSection,
    SourceSection,
    codec_reference,
)
from .config.lines import line_in
from .exceptions import ConfigError, ConfigIssue, PluginError
from .handler import retry_budget
from .plugin import Codec, SourceLimits
from .registry import PluginInfo, Registry, build_options, create_codec
from .validate import did_you_mean, join_path, option_issue

__all__ = ["HandlerPlan", "Plan", "SourcePlan", "plan", "plugin_issues"]


@dataclass
class HandlerPlan:
    name: str
    section: HandlerSection
    info: PluginInfo
    options: Any


@dataclass
class SourcePlan:
    name: str
    section: SourceSection
    info: PluginInfo
    options: Any


@dataclass
class Plan:
    """A config with every plugin resolved and every option validated."""

    config: Config
    codecs: dict[str, Codec] = field(default_factory=dict)  # per connection and source
    handlers: dict[str, HandlerPlan] = field(default_factory=dict)
    sources: dict[str, SourcePlan] = field(default_factory=dict)


def plan(config: Config, registry: Registry | None = None) -> Plan:
    """Load every plugin the config names and validate its options; ConfigError lists all."""
    result, issues = _resolve(config, registry)
    if any(not issue.warning for issue in issues):
        raise ConfigError([i for i in issues if not i.warning], source=config.path)
    config.warnings.extend(issues)
    return result


def plugin_issues(config: Config, registry: Registry | None = None) -> list[ConfigIssue]:
    """The plugin phase's errors for a config, even a partial one from
    :func:`~wsroute.config.load_partial`: a type error elsewhere in the file
    does not hide a plugin's option errors."""
    return [issue for issue in _resolve(config, registry)[1] if not issue.warning]


def _resolve(config: Config, registry: Registry | None) -> tuple[Plan, list[ConfigIssue]]:
    if registry is None:
        registry = Registry.discover(config.daemon.plugin_paths)
    issues: list[ConfigIssue] = []
    result = Plan(config)
    tables = _codec_tables(config, registry, issues)
    for name in [*config.connections, *config.sources]:
        section_name = "connections" if name in config.connections else "sources"
        path = f"{section_name}.{name}.codec"
        codec_name = (config.connections.get(name) or config.sources[name]).codec
        if codec_name in config.codecs:
            if codec_name not in tables:
                continue  # its [codecs.NAME] table is wrong: reported there
            info, options_path = tables[codec_name], f"codecs.{codec_name}"
        else:
            try:
                info = registry.codec(codec_name)
            except PluginError as exc:
                hint = did_you_mean(codec_name, config.codecs)
                if hint:
                    hint = hint.replace('"', "[codecs.", 1).replace('"?', "]?", 1)
                issues.append(ConfigIssue(path, f"{exc}{hint}"))
                continue
            options_path = path
        _, table = codec_reference(config, name)
        before = len(issues)
        options = build_options(info, table, options_path, issues)
        if len(issues) == before:
            try:
                result.codecs[name] = create_codec(info, options)
            except PluginError as exc:
                issues.append(_constructor_issue(info, options_path, exc))
    for name, section in config.handlers.items():
        path = f"handlers.{name}"
        try:
            info = registry.handler(section.plugin)
        except PluginError as exc:
            issues.append(ConfigIssue(f"{path}.plugin", str(exc)))
            continue
        before = len(issues)
        options = build_options(info, section.options, path, issues)
        if len(issues) == before:
            result.handlers[name] = HandlerPlan(name, section, info, options)
            issues.extend(_batch_issues(section, info, path))
        else:
            issues[before:] = [_delivery_hint(issue, path) for issue in issues[before:]]
    for name, source in config.sources.items():
        path = f"sources.{name}"
        try:
            info = registry.source(source.type)
        except PluginError as exc:
            issues.append(ConfigIssue(f"{path}.type", str(exc)))
            continue
        before = len(issues)
        options = build_options(info, source.options, path, issues)
        if len(issues) == before:
            result.sources[name] = SourcePlan(name, source, info, options)
            issues.extend(_source_limits(config, name, info, options))
    issues.extend(_route_key_warnings(config, result.codecs))
    # dict.fromkeys: a [codecs.NAME] table two connections use is reported once.
    found = list(dict.fromkeys(_with_line(issue, config.lines) for issue in issues))
    return result, sorted(found, key=lambda i: math.inf if i.line is None else i.line)


def _codec_tables(
    config: Config, registry: Registry, issues: list[ConfigIssue]
) -> dict[str, PluginInfo]:
    """Each ``[codecs.NAME]`` table checked once, used or not: its plugin at
    ``codecs.NAME.type``, its options below it. The tables that passed."""
    found: dict[str, PluginInfo] = {}
    used = {c.codec for c in config.connections.values()} | {
        s.codec for s in config.sources.values()
    }
    for name, section in config.codecs.items():
        path = f"codecs.{name}"
        try:
            info = registry.codec(section.type)
        except PluginError as exc:
            issues.append(ConfigIssue(f"{path}.type", str(exc)))
            continue
        before = len(issues)
        options = build_options(info, section.options, path, issues)
        if len(issues) > before:
            continue
        if name not in used:
            # Not built below: its constructor is tried here.
            try:
                create_codec(info, options)
            except PluginError as exc:
                issues.append(_constructor_issue(info, path, exc))
                continue
        found[name] = info
    return found


def _constructor_issue(info: PluginInfo, path: str, error: PluginError) -> ConfigIssue:
    """A codec constructor's ``ValueError`` naming an option, at that option's key path."""
    cause = error.__cause__
    if isinstance(cause, ValueError):
        return option_issue(info.options, path, cause)
    return ConfigIssue(path, str(error))


def _with_line(issue: ConfigIssue, lines: Mapping[str, int]) -> ConfigIssue:
    if issue.line is not None or not lines:
        return issue
    return dataclasses.replace(issue, line=line_in(lines, issue.path))


def _route_key_warnings(config: Config, codecs: dict[str, Codec]) -> list[ConfigIssue]:
    """A route key the codecs it can meet can never produce (``key = "3"`` for an int32)."""
    found: list[ConfigIssue] = []
    for name, route in config.routes.items():
        if route.keys is None:
            continue
        names = [route.connection] if route.connection else list(codecs)
        for index, key in enumerate(route.keys):
            if isinstance(key, str) and key.startswith("$"):
                continue
            reasons = []
            for connection in names:
                check = getattr(codecs.get(connection), "check_key", None)
                reason = check(key) if check is not None else None
                if reason is None:
                    break  # some connection can produce it
                reasons.append(f"{connection}: {reason}")
            else:
                if reasons:
                    path = f"routes.{name}.key"
                    if isinstance(route.key, list):
                        path = join_path(path, index)
                    found.append(ConfigIssue(path, "; ".join(reasons), warning=True))
    return found


def _delivery_hint(issue: ConfigIssue, handler_path: str) -> ConfigIssue:
    """An unknown plugin option that is close to a delivery key says so: `overflw`."""
    key = issue.path[len(handler_path) + 1 :]
    if not issue.message.startswith("unknown key") or "did you mean" in issue.message:
        return issue
    hint = did_you_mean(key, DELIVERY_KEYS)
    if not hint:
        return issue
    return ConfigIssue(issue.path, f"unknown key{hint}", issue.line, issue.warning)


def _source_limits(config: Config, name: str, info: PluginInfo, options: Any) -> list[ConfigIssue]:
    """Check what a source needs from the config: a dead-letter handler, handler budgets."""
    limits_of = getattr(info.obj, "limits", None)
    if limits_of is None:
        return []
    limits: SourceLimits = limits_of(options)
    path = f"sources.{name}"
    found: list[ConfigIssue] = []
    section = config.sources[name]
    if limits.needs_dead_letter and not (section.dead_letter or config.daemon.dead_letter):
        found.append(
            ConfigIssue(
                path,
                "max_deliveries needs a dead-letter handler: set dead_letter here or in [daemon]",
            )
        )
    if limits.redelivery_after is not None:
        for route_name, route in config.routes.items():
            if route.connection not in (None, name):
                continue
            for handler in route.handlers:
                if handler not in config.handlers:
                    continue  # a partial config (plugin_issues): reported already
                budget = retry_budget(config.handlers[handler])
                if budget >= limits.redelivery_after:
                    found.append(
                        ConfigIssue(
                            f"{path}.reclaim.min_idle",
                            f"{limits.redelivery_after:g}s is not above the time handler "
                            f'"{handler}" (route "{route_name}") may take on one message '
                            f"(timeout x (retries + 1) plus backoff = {budget:g}s): a slow "
                            "message could be reclaimed by another worker while it runs",
                            warning=True,
                        )
                    )
    return found


def _batch_issues(section: HandlerSection, info: PluginInfo, path: str) -> list[ConfigIssue]:
    """``batch`` is set on a handler class that has no ``handle_batch(messages)``."""
    if section.batch is None or not isinstance(info.obj, type):
        return []
    if callable(getattr(info.obj, "handle_batch", None)):
        return []
    return [
        ConfigIssue(
            f"{path}.batch",
            f'plugin "{section.plugin}" has no handle_batch(messages): it takes one message '
            "at a time (remove batch)",
        )
    ]
