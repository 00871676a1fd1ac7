"""systemd's notify protocol: a small in-house client (see ``sd_notify(3)``).

The protocol is one datagram of ``KEY=VALUE`` lines sent to the ``AF_UNIX``
socket named by ``$NOTIFY_SOCKET`` (``@name`` is an abstract socket). It is
stable and tiny, so wsroute speaks it itself instead of depending on a binding.

How the daemon uses it:

- at start, :meth:`Notifier.from_environ` takes ``NOTIFY_SOCKET`` and
  ``WATCHDOG_*`` out of ``os.environ`` so that no subprocess inherits them;
- :meth:`Notifier.ready` once the config is loaded and every handler has
  started (an upstream that is down must not fail the unit);
- :meth:`Notifier.status` whenever the one-line summary changes;
- :func:`watchdog_loop` as a task in the main task group: the pings come from
  the event loop itself, so a blocked loop stops them and systemd notices;
- :meth:`Notifier.reloading` then :meth:`Notifier.ready` around a SIGHUP reload;
- :meth:`Notifier.stopping` at shutdown, and :func:`extend_timeout_loop` while
  a drain that may outlast ``TimeoutStopSec`` runs.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a cheap no-op that
returns False. Nothing here raises: a lost notification must never take the
daemon down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from types import TracebackType

import anyio
import structlog

from .process import CHILD_UNSAFE_VARIABLES, NOTIFY_VARIABLES, child_environ

__all__ = [
    "CHILD_UNSAFE_VARIABLES",
    "NOTIFY_VARIABLES",
    "Notifier",
    "child_environ",
    "extend_timeout_loop",
    "watchdog_loop",
]

log = structlog.get_logger(__name__)


def _socket_address(value: str) -> str | None:
    """Map ``$NOTIFY_SOCKET`` to an ``AF_UNIX`` address, or None if unusable.

    ``@name`` is an abstract socket (leading NUL); anything else must be an
    absolute path. Other forms (``vsock:`` in systemd >= 254) are not spoken.
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _watchdog_interval(usec: str | None, pid: str | None, own_pid: int) -> float | None:
    """Seconds between pings: half of ``WATCHDOG_USEC``, if the watchdog is ours."""
    if not usec:
        return None
    try:
        micro = int(usec)
    except ValueError:
        return None
    if micro <= 0:
        return None
    if pid:
        try:
            if int(pid) != own_pid:
                return None
        except ValueError:
            return None
    return micro / 2 / 1_000_000


def _encode(fields: Mapping[str, str | int]) -> bytes:
    """One datagram: ``KEY=VALUE`` lines. Newlines in values would start a new
    assignment, so they become spaces (STATUS is a single line anyway)."""
    lines = []
    for key, value in fields.items():
        if isinstance(value, bool):
            value = int(value)
        text = str(value).replace("\r", " ").replace("\n", " ")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode("utf-8", "replace")


class Notifier:
    """A client for the socket systemd passes in ``$NOTIFY_SOCKET``.

    Build it with :meth:`from_environ` once, early in ``wsroute run``. Every
    method is safe to call when not under systemd (it does nothing) and never
    raises; each returns whether a datagram was sent.
    """

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_interval: float | None = None,
        send_timeout: float = 1.0,
    ) -> None:
        """``address`` is ``$NOTIFY_SOCKET`` as systemd writes it (``/path`` or
        ``@abstract``); None or an unusable value disables the notifier.
        ``send_timeout`` bounds how long a send may block the event loop when
        the receiver's queue is full (then the message is dropped).
        """
        self._address = _socket_address(address) if address else None
        self.enabled: bool = self._address is not None
        #: Seconds between ``WATCHDOG=1`` pings, or None when no watchdog is ours.
        self.watchdog_interval: float | None = watchdog_interval if self.enabled else None
        self._send_timeout = send_timeout
        self._sock: socket.socket | None = None
        self._pid = os.getpid()
        self._closed = False
        self._failing = False
        self._last_status: str | None = None

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        """Build a notifier from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        With ``unset`` (the default) the three variables are removed from
        ``environ`` (default ``os.environ``, which also unsets them for the
        C library), so processes started later never inherit them — systemd
        would otherwise take a child's ``READY=1`` or ``WATCHDOG=1`` for ours.
        A ``WATCHDOG_PID`` naming another process means the watchdog is not
        ours to feed: ``watchdog_interval`` is then None.
        """
        env: MutableMapping[str, str] = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET")
        interval = _watchdog_interval(
            env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"), os.getpid()
        )
        if unset:
            for name in NOTIFY_VARIABLES:
                env.pop(name, None)
        return cls(address, watchdog_interval=interval)

    def send(self, **fields: str | int) -> bool:
        """Send one datagram with ``fields`` as ``KEY=VALUE`` lines, in order.

        Returns False when disabled, closed, called from a forked child, or
        when sending failed; the first failure of a streak is logged at debug.
        """
        address = self._address
        if address is None or self._closed or not fields:
            return False
        if os.getpid() != self._pid:
            # A forked child (multiprocessing, a plugin) is not the main PID;
            # systemd would reject its messages under NotifyAccess=main anyway.
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.settimeout(self._send_timeout)
                self._sock = sock
            self._sock.sendto(_encode(fields), address)
        except (OSError, ValueError) as exc:
            if not self._failing:
                self._failing = True
                log.debug("notify_send_failed", fields=sorted(fields), error=str(exc))
            return False
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (optionally with ``STATUS=``): after start-up and after a reload."""
        if status is None:
            return self.send(READY=1)
        ok = self.send(READY=1, STATUS=status)
        if ok:
            self._last_status = status
        return ok

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``: call when a reload starts;
        :meth:`ready` when it is done, whether the new config was applied or not."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=now)

    def stopping(self) -> bool:
        """``STOPPING=1``: call once when the ordered shutdown begins."""
        return self.send(STOPPING=1)

    def status(self, text: str) -> bool:
        """``STATUS=text`` (shown by ``systemctl status``); a repeat of the last
        text sent is skipped, so callers may call this on every tick."""
        if text == self._last_status and self.enabled and not self._closed:
            return True
        ok = self.send(STATUS=text)
        if ok:
            self._last_status = text
        return ok

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: prefer :func:`watchdog_loop`, which calls this on time."""
        return self.send(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: the service needs up to ``seconds`` more from now.

        Valid while starting, reloading or stopping. Another notification must
        follow within ``seconds`` or systemd acts on its own timeout; see
        :func:`extend_timeout_loop`.
        """
        return self.send(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1_000_000)))

    def close(self) -> None:
        """Release the socket; later calls do nothing. Safe to call twice."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("enabled" if self.enabled else "disabled")
        return f"<Notifier {state} watchdog_interval={self.watchdog_interval}>"


async def watchdog_loop(notifier: Notifier) -> None:
    """Send ``WATCHDOG=1`` every ``notifier.watchdog_interval`` until cancelled.

    Run it as a task in the daemon's main task group. Because the pings come
    from the event loop, a loop blocked by a misbehaving handler misses them
    and systemd kills the unit with SIGABRT (``PYTHONFAULTHANDLER=1`` then
    prints every thread's stack to the journal). Returns at once when there
    is no watchdog to feed.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await anyio.sleep(interval)


async def extend_timeout_loop(notifier: Notifier, interval: float = 2.0) -> None:
    """Keep asking systemd for time while a long drain runs; cancel when done.

    Every ``interval`` seconds it sends ``EXTEND_TIMEOUT_USEC`` for twice the
    interval, so one late tick does not let ``TimeoutStopSec`` fire while
    work is still progressing. The drain's own budget (``shutdown_timeout``)
    still bounds it. Returns at once when the notifier is disabled.
    """
    if not notifier.enabled:
        return
    while True:
        notifier.extend_timeout(2 * interval)
        await anyio.sleep(interval)
