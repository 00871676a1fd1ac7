"""Waiting on real things in a test: a condition polled, a port for a server to start.

Invariant: every wait here is bounded; :func:`wait_until` raises
``TimeoutError`` after its ``timeout`` rather than hang a test, and
:func:`free_port` holds no socket open once it returns.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import anyio


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (for servers a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(
    predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.01
) -> None:
    """Poll ``predicate()`` until it is true; ``TimeoutError`` after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(step)
