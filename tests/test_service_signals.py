"""The daemon's signal handlers are in place before it tells systemd it is ready.

``systemctl stop`` may follow ``READY=1`` at once. If SIGTERM arrived before
the handlers were installed, its default action would kill the process: no
drain, no ``STOPPING=1``, whatever was queued lost.
"""

from __future__ import annotations

import signal
from typing import Any

import anyio
import pytest

from wsroute.notify import Notifier
from wsroute.testing import free_port

import conftest

pytestmark = pytest.mark.anyio

CONFIG = """
[connections.up]
url = "ws://127.0.0.1:PORT/"
codec = "json"

[routes.all]
key = "tick"
handlers = ["sink"]

[handlers.sink]
plugin = "collectors:Collect"
"""


async def test_sigterm_is_handled_before_ready_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    at_ready: list[Any] = []
    ready = Notifier.ready

    def record(self: Notifier, status: str | None = None) -> bool:
        at_ready.append(signal.getsignal(signal.SIGTERM))
        return ready(self, status)

    monkeypatch.setattr(Notifier, "ready", record)
    before = signal.getsignal(signal.SIGTERM)
    text = CONFIG.replace("PORT", str(free_port()))  # nobody listens: it keeps retrying
    async with conftest.running(text):
        with anyio.fail_after(5):
            while not at_ready:
                await anyio.sleep(0.01)
    assert at_ready[0] is not signal.SIG_DFL
    assert at_ready[0] is not before  # the event loop's handler, not the one from before
    assert signal.getsignal(signal.SIGTERM) == before  # given back at shutdown
