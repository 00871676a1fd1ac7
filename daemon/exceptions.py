"""The one exception tree of wsroute.

.. code-block:: text

    WsrouteError
    ├── ConfigError          bad config: one or more ConfigIssue, each with its key path
    ├── PluginError          a plugin could not be found, imported or does not fit the contract
    ├── CodecError
    │   ├── DecodeError      a frame the codec cannot turn into a message
    │   └── EncodeError      an outgoing frame the codec cannot build
    └── SendError            a frame could not be sent upstream (not connected, closed)

At the CLI boundary each of these becomes one line per problem on stderr and an
exit code (78 for ConfigError and PluginError), never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CodecError",
    "ConfigError",
    "ConfigIssue",
    "DecodeError",
    "EncodeError",
    "PluginError",
    "SendError",
    "WsrouteError",
]


class WsrouteError(Exception):
    """Base class of every error wsroute raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file: the dotted key path and what is wrong there."""

    path: str
    message: str
    line: int | None = None
    warning: bool = False

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        prefix = f"{self.path}: " if self.path else ""
        return f"{prefix}{self.message}{where}"


class ConfigError(WsrouteError):
    """The config is invalid; ``issues`` lists every problem found, not just the first."""

    def __init__(self, issues: Iterable[ConfigIssue] | str, source: str | None = None) -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue("", issues)]
        self.issues: list[ConfigIssue] = list(issues)
        self.source = source
        super().__init__("\n".join(str(issue) for issue in self.issues))


class PluginError(WsrouteError):
    """A plugin could not be found or loaded, or it does not fit the plugin contract."""


class CodecError(WsrouteError):
    """Base class of codec failures."""


class DecodeError(CodecError):
    """A frame could not be decoded. The message says why, in a few words."""


class EncodeError(CodecError):
    """An outgoing frame could not be encoded."""


class SendError(WsrouteError):
    """A frame could not be sent upstream: unknown connection, not connected, or closed."""
