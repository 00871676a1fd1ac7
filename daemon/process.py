"""Public helpers for plugins that start processes.

A process started by a plugin runs beside the daemon under systemd: it must not
inherit the daemon's notify socket, watchdog or socket-activation variables.
:func:`child_environ` is the environment to give it (the built-in ``exec``
sink uses it). Part of the plugin API: see docs/plugins.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["CHILD_UNSAFE_VARIABLES", "NOTIFY_VARIABLES", "child_environ"]

#: What :meth:`wsroute.notify.Notifier.from_environ` consumes (and removes).
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

#: What a process started by a plugin must not inherit: the notify socket and
#: watchdog (systemd would take its messages for ours, or ignore them with a
#: warning) and socket activation (it would try to adopt our file descriptors).
CHILD_UNSAFE_VARIABLES = (*NOTIFY_VARIABLES, "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def child_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``environ`` (default ``os.environ``) fit for a subprocess.

    Plugins that start processes pass this as ``env=``. The daemon already removes
    the notify variables from ``os.environ`` at start; this also covers socket
    activation and environments built elsewhere (``dict(os.environ, **extra)``).
    """
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k not in CHILD_UNSAFE_VARIABLES}
