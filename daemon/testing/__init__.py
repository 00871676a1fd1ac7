"""Test helpers for plugin authors: a handler or a codec without a network, or end to end.

Without a network::

    from wsroute.testing import RecordingContext, build_handler, message

    async def test_pong() -> None:
        ctx = RecordingContext("pong")
        handler = build_handler("reply", {"json": {"op": "pong"}}, ctx=ctx)
        await handler.handle(message({"op": "ping"}, key="ping", connection="exchange"))
        assert [(conn, out.json) for conn, out in ctx.sent] == [("exchange", {"op": "pong"})]

Options go through the same validation as in the daemon, so a test also
catches an options table the config would reject.

End to end, with the ``wsroute_daemon`` pytest fixture (installed with wsroute
as a pytest plugin): a real upstream on 127.0.0.1 and the daemon in-process on a
config, where ``${WSROUTE_UPSTREAM}`` is the upstream's URL and ``${WSROUTE_TMP}``
the test's temporary folder::

    async def test_end_to_end(wsroute_daemon) -> None:
        upstream = ScriptedUpstream(frames=['{"type": "hello"}'])
        async with wsroute_daemon(CONFIG, upstream=upstream) as daemon:
            seen = daemon.handler("seen")          # a wsroute.testing:Recorder
            await daemon.wait_until(lambda: seen.messages)
        assert seen.messages[0].key == "hello"

A sink's outage, with :func:`run_outage`: the target taken down mid-run and
brought back, the message sent meanwhile held (the outage rule), then it and
the next one handled::

        async with wsroute_daemon(CONFIG, upstream=ScriptedUpstream()) as daemon:
            outage = await run_outage(daemon, "bus", stop=server.stop, start=server.start)
        assert outage.down["outage"] == 1

The kit, one module per concept (everything public is re-exported here, the
only import path a test should use):

- ``context``: :class:`RecordingContext` and :func:`message`, no daemon at all;
- ``build``: :func:`build_handler`, :func:`run_handler`, :func:`build_codec`,
  :func:`decode`, :func:`decode_all`, through the daemon's own validation;
- ``delivery``: :func:`deliver` and :class:`Delivery`: messages through the
  daemon's delivery (queue, ``handle_batch``, retries, timeouts, dead letters);
- ``waiting``: :func:`wait_until` and :func:`free_port`;
- ``upstream``: :class:`ScriptedUpstream`, :class:`Recorder` and the
  ``Upstream`` protocol;
- ``daemon``: :class:`Daemon`, :func:`run_daemon` and the ``wsroute_daemon`` fixture;
- ``outage``: :class:`Outage` and :func:`run_outage`.

Invariant: this package is the ``pytest11`` plugin module (entry point
``wsroute = "wsroute.testing"``), so the fixture is imported here for pytest to
collect, and importing it stays light: no ``wsroute.service`` or
``wsroute.config`` until a daemon runs.
"""

from __future__ import annotations

import contextlib

from .build import build_codec, build_handler, decode, decode_all, run_handler
from .context import RecordingContext, message
from .daemon import Daemon, run_daemon
from .delivery import Delivery, deliver
from .outage import Outage, run_outage
from .upstream import Recorder, ScriptedUpstream
from .waiting import free_port, wait_until

# The pytest plugin's fixture: pytest collects it from this module. It exists
# only when pytest is installed (the rest of the kit works without it).
with contextlib.suppress(ImportError):
    from .daemon import wsroute_daemon as wsroute_daemon

__all__ = [
    "Daemon",
    "Delivery",
    "Outage",
    "Recorder",
    "RecordingContext",
    "ScriptedUpstream",
    "build_codec",
    "build_handler",
    "decode",
    "decode_all",
    "deliver",
    "free_port",
    "message",
    "run_daemon",
    "run_handler",
    "run_outage",
    "wait_until",
]
