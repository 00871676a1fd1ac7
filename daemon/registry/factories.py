"""Building plugin instances: an options table into ``Options``, then handlers, codecs, sources.

Invariant: nothing is constructed from a plugin that did not load; an exception
from a plugin's constructor becomes a :class:`PluginError` naming the plugin, and
the instance it returns is checked against its contract before it is used.
Options marked secret are registered for masking as soon as they are validated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..exceptions import ConfigIssue, PluginError
from ..logging import register_secrets
from ..plugin import Codec
from ..validate import INVALID, convert, join_path, secret_values
from .contracts import check_codec_members, check_handler_members, check_source_members
from .info import PluginInfo

__all__ = ["build_options", "create_codec", "create_handler", "create_source"]


def build_options(
    info: PluginInfo, table: Mapping[str, Any], path: str, issues: list[ConfigIssue]
) -> Any:
    """Validate a plugin's options table into its ``Options`` dataclass.

    Problems are appended to ``issues`` with key paths under ``path`` (such as
    ``handlers.archive.path``) and :data:`~wsroute.validate.INVALID` is returned;
    a plugin without ``Options`` gets ``None``, and any key is an issue.
    """
    if info.options is None:
        for key in table:
            issues.append(
                ConfigIssue(
                    join_path(path, key), f'unknown key: plugin "{info.name}" takes no options'
                )
            )
        return INVALID if table else None
    try:
        options = convert(info.options, dict(table), path, issues)
    except TypeError as exc:  # an annotation validate cannot convert: the plugin's fault
        issues.append(ConfigIssue(path, f'plugin "{info.name}": {exc}'))
        return INVALID
    register_secrets(secret_values(options))  # options marked secret: masked in every log line
    return options


def _require_loaded(info: PluginInfo) -> None:
    if info.obj is None:
        raise PluginError(info.error or f'{info.kind} plugin "{info.name}" is not loaded')


def create_handler(info: PluginInfo, options: Any, ctx: Any) -> Any:
    """Construct a handler instance as ``obj(options, ctx)`` and check what came back.

    Any exception from the constructor becomes a :class:`PluginError` naming the
    handler and the plugin.
    """
    _require_loaded(info)
    handler_name = getattr(ctx, "name", None)
    where = (
        f'handler "{handler_name}" (plugin "{info.name}")'
        if handler_name
        else (f'handler plugin "{info.name}"')
    )
    try:
        instance = info.obj(options, ctx)
    except Exception as exc:
        raise PluginError(f"{where} could not be created: {type(exc).__name__}: {exc}") from exc
    check_handler_members(where, instance)
    return instance


def create_source(info: PluginInfo, options: Any, ctx: Any) -> Any:
    """Construct a source instance as ``obj(options, ctx)`` and check what came back."""
    _require_loaded(info)
    where = f'source "{getattr(ctx, "name", "?")}" (plugin "{info.name}")'
    try:
        instance = info.obj(options, ctx)
    except Exception as exc:
        raise PluginError(f"{where} could not be created: {type(exc).__name__}: {exc}") from exc
    check_source_members(where, instance)
    return instance


def create_codec(info: PluginInfo, options: Any) -> Codec:
    """Construct a codec instance as ``obj(options)`` and check what came back."""
    _require_loaded(info)
    where = f'codec plugin "{info.name}"'
    try:
        instance = info.obj(options)
    except Exception as exc:
        raise PluginError(f"{where} could not be created: {type(exc).__name__}: {exc}") from exc
    check_codec_members(where, instance)
    codec: Codec = instance
    return codec
