"""One exception tree: every public exception of wsroute and its built-in plugins
derives from ``WsrouteError``, keeping the standard bases callers rely on."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import wsroute
import wsroute.plugins
from wsroute.apiclient import ApiError


def public_exceptions() -> list[type[BaseException]]:
    """Every exception class with a public name defined in a module of wsroute or
    of its built-in plugins (private modules included: what they raise escapes)."""
    found: dict[str, type[BaseException]] = {}
    for package in (wsroute, wsroute.plugins):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if (
                    not name.startswith("_")
                    and inspect.isclass(value)
                    and issubclass(value, BaseException)
                    and value.__module__ == module.__name__
                ):
                    found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]


def test_every_public_exception_is_a_wsroute_error() -> None:
    classes = public_exceptions()
    names = {f"{c.__module__}.{c.__qualname__}" for c in classes}
    # The walk sees the package and the plugins, not just what __init__ exports.
    assert {"wsroute.exceptions.ConfigError", "wsroute.plugins.exec.ExecError"} <= names
    outside = sorted(
        f"{c.__module__}.{c.__qualname__}"
        for c in classes
        if not issubclass(c, wsroute.WsrouteError)
    )
    assert outside == []


@pytest.mark.parametrize(
    ("name", "standard"),
    [
        ("wsroute.plugins.exec.ExecError", RuntimeError),
        ("wsroute.plugins.webhook.WebhookError", RuntimeError),
        ("wsroute.plugins.nats.NatsRefused", RuntimeError),
        ("wsroute.plugins.redis.batcher.PipelineError", RuntimeError),
        ("wsroute.plugins.redis.dedupe.DedupeError", RuntimeError),
    ],
)
def test_the_plugins_errors_keep_their_standard_base(name: str, standard: type) -> None:
    module, _, attr = name.rpartition(".")
    cls = getattr(importlib.import_module(module), attr)
    assert issubclass(cls, wsroute.WsrouteError)
    assert issubclass(cls, standard)


def test_an_option_error_is_still_a_value_error() -> None:
    error = wsroute.OptionError("limit", "must be above 0")
    assert isinstance(error, ValueError)
    assert isinstance(error, wsroute.WsrouteError)
    assert (error.key, error.message, str(error)) == (
        "limit",
        "must be above 0",
        "limit: must be above 0",
    )
    # Importable from the plugin API's module too, as before.
    from wsroute.plugin import OptionError

    assert OptionError is wsroute.OptionError


def test_the_handshake_errors_are_wsroute_errors() -> None:
    from wsroute.wire import (
        BadURL,
        HandshakeFailed,
        HandshakeRejected,
        ProxyFailed,
        RedirectRefused,
    )

    for cls in (HandshakeRejected, RedirectRefused, ProxyFailed):
        assert issubclass(cls, HandshakeFailed)
    assert issubclass(HandshakeFailed, wsroute.WsrouteError)
    assert issubclass(BadURL, wsroute.WsrouteError)


def test_connection_closed_is_a_send_error() -> None:
    closed = wsroute.ConnectionClosed("gone", code=1001, reason="going away")
    assert isinstance(closed, wsroute.SendError)
    assert (closed.code, closed.reason) == (1001, "going away")
    assert issubclass(ApiError, wsroute.WsrouteError)


def test_the_tree_is_drawn_with_every_public_exception() -> None:
    drawn = wsroute.exceptions.__doc__ or ""
    for cls in public_exceptions():
        assert cls.__name__ in drawn, cls


@pytest.mark.anyio
async def test_a_closed_client_raises_connection_closed() -> None:
    from wsroute.testing import ScriptedUpstream

    async with ScriptedUpstream().serve() as url:
        client = wsroute.connect(url, codec="json")
        async with client:
            await client.send(json={"op": "ping"})
            await client.close()
            with pytest.raises(wsroute.ConnectionClosed, match="the client is closed"):
                await client.send(json={"op": "late"})
            with pytest.raises(wsroute.ConnectionClosed):
                await client.wait_connected()


def test_a_close_under_a_send_is_wsroutes_own_with_its_code() -> None:
    from websockets.exceptions import ConnectionClosedError
    from websockets.frames import Close

    from wsroute.connection import _closed

    theirs = ConnectionClosedError(Close(1011, "internal error"), None)
    ours = _closed("connection 'up' closed while sending", theirs)
    assert isinstance(ours, wsroute.ConnectionClosed)
    assert isinstance(ours, wsroute.SendError)  # a handler's retries see what they saw before
    assert (ours.code, ours.reason) == (1011, "internal error")
    assert str(ours).startswith("connection 'up' closed while sending: ")
    lost = _closed("closed while sending", ConnectionClosedError(None, None))
    assert (lost.code, lost.reason) == (None, "")
