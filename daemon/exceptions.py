"""The one exception tree of wsroute.

.. code-block:: text

    WsrouteError
    ├── ConfigError          bad config: one or more ConfigIssue, each with its key path
    ├── PluginError          a plugin could not be found, imported or does not fit the contract
    ├── CodecError
    │   ├── DecodeError      a frame the codec cannot turn into a message
    │   └── EncodeError      an outgoing frame the codec cannot build
    ├── SendError            a frame could not be sent upstream (not connected, closed)
    ├── Unavailable          a sink's engine is unavailable: an outage, not a failure
    └── OutageExpired        an outage outlasted the handler's outage_timeout

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
    "OutageExpired",
    "PluginError",
    "SendError",
    "Unavailable",
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


class Unavailable(WsrouteError):
    """The engine is unavailable: not a failure of this message. Raise it from a sink.

    The daemon keeps the message (no failed attempt is counted, ``retries`` is
    untouched), waits with capped, jittered backoff — at least ``retry_after``
    seconds when given (an HTTP ``Retry-After``) — and calls ``handle()``
    again with the same message, until the engine is back or the handler's
    ``outage_timeout`` passed. ``engine`` names the outage in the log events
    (``<engine>_unavailable``, ``<engine>_recovered``); by default the
    handler's plugin name. See :mod:`wsroute.outage`.
    """

    def __init__(
        self, message: str = "", *, retry_after: float | None = None, engine: str | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.engine = engine


class OutageExpired(WsrouteError):
    """The outage lasted ``outage_timeout``: the message is given up (dead letter ``outage``)."""
