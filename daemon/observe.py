"""``wsroute status``, ``tap`` and ``top``: looking inside a running daemon through its API.

Exit statuses (sysexits): 0 done (``tap``: its ``--limit`` reached, or Ctrl-C);
69 (EX_UNAVAILABLE) the daemon is not running or went away; 77 (EX_NOPERM)
``/status`` or ``/tap`` refused (over TCP without ``tap_over_tcp``, or the Unix
socket's permissions); 78 (EX_CONFIG) no usable address (the config has no
``[daemon.api] listen``); 64 (EX_USAGE) ``top`` without a terminal, or a ``tap``
filter the daemon refuses (an unknown route). Every
failure is one line on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TextIO

from .apiclient import (
    DEFAULT_TIMEOUT,
    EX_USAGE,
    ApiAddress,
    ApiError,
    get_body,
    get_json,
    open_tap,
    resolve,
    tap_query,
)

__all__ = ["EX_USAGE", "TAP_FILTERS", "address_of", "run", "status", "tap", "top"]

TAP_FILTERS = ("connection", "key", "handler", "route")


def address_of(api: str | None, config: str | None, default_config: str) -> ApiAddress:
    """The API address from ``--api`` / ``-c`` (see :func:`wsroute.apiclient.resolve`)."""
    return resolve(api=api, config=config, default_config=default_config)


def fail(error: ApiError) -> int:
    print(f"wsroute: {error}", file=sys.stderr)
    return error.exit_code


# --- status -------------------------------------------------------------------------------


def status(address: ApiAddress, *, as_json: bool) -> int:
    """Print ``/status``: tables (plain text when stdout is not a terminal), or its JSON."""
    from rich.console import Console

    from .views import status_view

    try:
        body = get_body(address, "/status")
        document = _json(body, address)
    except ApiError as error:
        return fail(error)
    if as_json:
        out = sys.stdout.buffer
        out.write(body if body.endswith(b"\n") else body + b"\n")
        out.flush()
        return 0
    terminal = sys.stdout.isatty()
    wide = None if terminal or os.environ.get("COLUMNS") else 200
    console = Console(width=wide, soft_wrap=False, highlight=False)
    view = status_view(document, plain=not terminal)
    if terminal:
        console.print(view)
        return 0
    with console.capture() as captured:
        console.print(view)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    sys.stdout.flush()
    return 0


def _json(body: bytes, address: ApiAddress) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(f"/status on {address}: the answer is not JSON") from None


# --- tap ----------------------------------------------------------------------------------


def tap(address: ApiAddress, filters: Mapping[str, Sequence[str]], *, limit: int | None) -> int:
    """Print ``/tap`` records, one JSON document a line, until ``limit`` or the daemon goes."""
    try:
        return asyncio.run(_tap(address, tap_query(filters), limit, sys.stdout))
    except ApiError as error:
        return fail(error)
    except BrokenPipeError:
        # The reader (head, jq) is gone: that is the end, not an error.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def _tap(address: ApiAddress, path: str, limit: int | None, out: TextIO) -> int:
    from websockets.exceptions import ConnectionClosed

    if limit is not None and limit <= 0:
        return 0
    ws = await open_tap(address, path)
    printed = 0
    try:
        while True:
            try:
                message = await ws.recv()
            except ConnectionClosed as exc:
                why = f"code {exc.rcvd.code}" if exc.rcvd else "no close frame"
                raise ApiError(f"wsroute went away (the tap on {address} closed: {why})") from None
            text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if isinstance(record, dict) and record.get("event") == "tap_dropped":
                print(
                    f"wsroute: tap_dropped: {record.get('count', '?')} records did not fit "
                    "this client's buffer (read faster, or filter more)",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            if "\n" in text and record is not None:
                text = json.dumps(record, separators=(",", ":"))
            out.write(text + "\n")
            out.flush()
            printed += 1
            if limit is not None and printed >= limit:
                return 0
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 1.0)


# --- top ----------------------------------------------------------------------------------


def top(address: ApiAddress, *, interval: float) -> int:
    """A live view refreshed every ``interval`` seconds; ``q`` or Ctrl-C leaves."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    from .views import Sample, rates, status_view

    interval = max(0.1, interval)
    timeout = min(DEFAULT_TIMEOUT, max(1.0, interval))
    try:
        current = Sample(get_json(address, "/status", timeout=timeout), time.monotonic())
    except ApiError as error:
        return fail(error)
    if not sys.stdout.isatty():  # after the first read: "not running" comes first
        return fail(ApiError("top needs a terminal: use `wsroute status` (or --json)", EX_USAGE))
    previous: Sample | None = None
    problem: str | None = None

    def view() -> Group:
        footer = Text(f"{address}  every {interval:g}s  q or Ctrl-C: quit", style="dim")
        parts: list[Any] = []
        if problem:
            parts.append(Text(f"{problem}  (showing the last answer)", style="bold red"))
        per_second = rates(previous, current)
        parts.append(status_view(current.status, per_second=per_second, show_rates=True))
        parts.append(footer)
        return Group(*parts)

    console = Console(highlight=False)
    with _keys() as pressed, Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            live.update(view(), refresh=True)
            if pressed(current.at + interval):
                return 0
            try:
                status = get_json(address, "/status", timeout=timeout)
            except ApiError as error:
                problem = str(error)
                continue
            problem = None
            previous, current = current, Sample(status, time.monotonic())
            if previous.status.get("pid") != status.get("pid"):
                previous = None  # another daemon: its counters start again


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """A function that waits until a deadline (``time.monotonic()``) and tells whether
    ``q`` was pressed; the terminal is in cbreak mode meanwhile (Ctrl-C still
    interrupts) and restored however the view ends."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    saved = None
    if fd >= 0 and os.isatty(fd):
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    reading = saved is not None

    def pressed(deadline: float) -> bool:
        nonlocal reading
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not reading:
                time.sleep(left)
                return False
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data = os.read(fd, 64)
                if not data:
                    reading = False  # stdin closed: only Ctrl-C ends the view
                elif b"q" in data or b"Q" in data:
                    return True

    try:
        yield pressed
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(args: Any, default_config: str) -> int:
    """``wsroute status|tap|top`` from the parsed arguments."""
    try:
        address = address_of(args.api, args.config, default_config)
    except ApiError as error:
        return fail(error)
    if args.command == "status":
        return status(address, as_json=args.json)
    if args.command == "tap":
        filters = {name: getattr(args, name) or [] for name in TAP_FILTERS}
        return tap(address, filters, limit=args.limit)
    if args.command == "top":
        return top(address, interval=args.interval)
    raise AssertionError(args.command)  # pragma: no cover
