r"""The one exception tree of wsroute: every error it raises on purpose, and its plugins'.

.. code-block:: text

    WsrouteError                     catch this to catch anything wsroute raises on purpose
    ├── ConfigError                  bad config: one or more ConfigIssue, each with its key path
    ├── OptionError (ValueError)     one plugin option is wrong (raised in Options.__post_init__)
    ├── PluginError                  a plugin could not be found, imported or does not fit
    │   └── MissingExtra             a built-in's client library is not installed (the pip extra)
    ├── CodecError
    │   ├── DecodeError              a frame the codec cannot turn into a message
    │   └── EncodeError              an outgoing frame the codec cannot build
    ├── SendError                    a frame could not be sent upstream (unknown, not connected)
    │   └── ConnectionClosed         the connection closed: while sending, or for good
    ├── HandshakeFailed              the WebSocket opening handshake failed (wsroute.wire)
    │   ├── HandshakeRejected        the server answered with an HTTP status, not 101
    │   ├── RedirectRefused          a redirect the connection's ``redirects`` does not allow
    │   └── ProxyFailed              the proxy refused the tunnel
    ├── BadURL                       a URL no WebSocket can be opened to (wsroute.wire)
    ├── Unavailable                  a sink's engine is unavailable: an outage, not a failure
    │   └── WebhookUnavailable       (also a WebhookError)
    ├── OutageExpired                an outage outlasted the handler's outage_timeout
    ├── ApiError                     wsroute status/tap/top: the daemon's API (wsroute.apiclient)
    ├── InputRefused                 a file not read (too large, not a regular file, not UTF-8;
    │                                wsroute.inputs): reported as a ConfigError's issue
    └── the built-in plugins' errors, each also a RuntimeError (one message's failed attempt:
        retried, then dead-lettered): ExecError (plugins.exec), WebhookError (.webhook),
        NatsRefused (.nats), PipelineError (.redis.batcher), DedupeError (.redis.dedupe)

Standard bases stay where callers rely on them, by multiple inheritance: an
``OptionError`` is a ``ValueError`` (what ``__post_init__`` raised before), the
plugins' errors are ``RuntimeError``\ s. At the CLI boundary each of these
becomes one line per problem on stderr and an exit code (78 for ConfigError and
PluginError), never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CodecError",
    "ConfigError",
    "ConfigIssue",
    "ConnectionClosed",
    "DecodeError",
    "EncodeError",
    "OptionError",
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


class OptionError(WsrouteError, ValueError):
    """One option of a plugin is wrong: raise it from ``Options.__post_init__`` (or a
    codec's constructor) to have the problem reported at that option's key path.

    ``OptionError("limit", "must be above 0")`` in the options of handler
    ``alarm`` is reported as ``handlers.alarm.limit: must be above 0 (line 12)``.
    ``key`` may be dotted for a nested table (``"restart.initial"``). A plain
    ``ValueError`` whose message starts with an option's name (``"limit must be
    above 0"``, ``"limit: must be above 0"``) is reported the same way.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


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


class ConnectionClosed(SendError):
    """The connection closed, whichever WebSocket library carries it.

    Raised for a frame the socket closed under (the connection reconnects by
    itself; that frame was not sent), and by a library client that was closed
    (:meth:`wsroute.Client.send`, :meth:`~wsroute.Client.wait_connected`: no more
    messages will come). ``code`` and ``reason`` are the close frame's, when
    there was one.
    """

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


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
