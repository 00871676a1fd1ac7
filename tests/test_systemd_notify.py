"""The test plays systemd: ``wsroute run`` as a real process, notifying a socket we bound.

What systemd would see through ``$NOTIFY_SOCKET``, in order: ``READY=1`` once
the handlers are up (even with the upstream down), ``WATCHDOG=1`` at half of
``WATCHDOG_USEC`` from the event loop (so a blocked loop stops them),
``RELOADING=1`` + ``MONOTONIC_USEC`` then ``READY=1`` around SIGHUP,
``STOPPING=1`` then exit 0 on SIGTERM, ``EXTEND_TIMEOUT_USEC`` while a long
drain runs; ``STATUS=`` lines throughout. Plugins and their children never see
the notify variables.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wsroute.testing import free_port

from systemd_helpers import (
    PROBES,
    Daemon,
    NotifyListener,
    daemon,
    daemon_environ,
    jsonl_lines,
    notify_listener,
    reference_config,
    upstream,
    wait_for,
)

# WATCHDOG_USEC=400000: the daemon pings every 0.2 s.
WATCHDOG_USEC = 400_000
# The blocker holds the event loop this long; no ping may arrive meanwhile.
BLOCK_SECONDS = 2.0
# Generous bounds for a loaded 2-core CI machine; none is a speed assertion.
START_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    with notify_listener() as notify:
        yield notify


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "probes.py").write_text(PROBES)
    folder.chmod(0o700)  # plugin_paths folders must not be writable by others
    return folder


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wsroute.toml"
    path.write_text(text)
    return path


def run_daemon(
    tmp_path: Path, listener: NotifyListener, **env: str
) -> contextlib.AbstractContextManager[Daemon]:
    """``wsroute run`` on tmp_path/wsroute.toml, notifying ``listener``, watchdog on."""
    return daemon(
        tmp_path / "wsroute.toml",
        tmp_path / "daemon.log",
        daemon_environ(listener.path, WATCHDOG_USEC, **env),
    )


def stop_cleanly(proc: Daemon, listener: NotifyListener) -> int:
    """SIGTERM; assert STOPPING=1 comes after every READY=1, then exit 0. Returns
    the index of STOPPING=1."""
    mark = len(listener.received)
    proc.send_signal(signal.SIGTERM)
    stopping = listener.wait("STOPPING", "1", after=mark, timeout=EXIT_TIMEOUT, sender=proc)
    assert proc.wait(EXIT_TIMEOUT) == 0, proc.log_text()[-3000:]
    readies = [i for i, d in enumerate(listener.received) if d.has("READY", "1")]
    assert readies
    assert max(readies) < stopping
    names = proc.event_names()
    assert "shutdown_complete" in names
    assert "delivery_unbalanced" not in names
    return stopping


def reload(proc: Daemon, listener: NotifyListener) -> tuple[int, int]:
    """SIGHUP; assert RELOADING=1 with a plausible MONOTONIC_USEC, then READY=1.

    Returns the indexes of the two datagrams.
    """
    mark = len(listener.received)
    before = time.monotonic()
    proc.send_signal(signal.SIGHUP)
    reloading = listener.wait("RELOADING", "1", after=mark, sender=proc)
    datagram = listener.received[reloading]
    # CLOCK_MONOTONIC, in µs, taken by the daemon between our signal and our receipt.
    stamp = int(datagram.fields["MONOTONIC_USEC"])
    assert int(before * 1_000_000) <= stamp <= int(datagram.at * 1_000_000) + 1
    ready = listener.wait("READY", "1", after=reloading + 1, sender=proc)
    return reloading, ready


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.slow
def test_ready_watchdog_reload_and_stop_with_a_real_upstream(
    tmp_path: Path, listener: NotifyListener
) -> None:
    with upstream(tmp_path) as up:
        write_config(tmp_path, reference_config(up.url, tmp_path))
        with run_daemon(tmp_path, listener) as proc:
            ready = listener.wait("READY", "1", timeout=START_TIMEOUT, sender=proc)
            # READY=1 is the first thing systemd hears, and it carries the status line.
            assert ready == 0, listener.describe()
            assert "connected" in listener.received[ready].fields["STATUS"]
            # Periodic pings follow, from the event loop.
            wait_for(
                lambda: listener.count("WATCHDOG", "1", after=ready) >= 5,
                START_TIMEOUT,
                "five WATCHDOG=1",
            )
            # Frames flow, and the periodic STATUS= line says so.
            wait_for(lambda: jsonl_lines(tmp_path / "archive.jsonl") >= 10, 20, "ticks archived")
            status = listener.wait("STATUS", after=ready + 1, timeout=20)
            wait_for(
                lambda: any(
                    d.fields.get("STATUS", "").startswith("1/1 connected")
                    for d in listener.received
                ),
                20,
                'STATUS="1/1 connected; ..."',
            )
            assert "connected" in listener.received[status].fields["STATUS"]

            reloading, ready_again = reload(proc, listener)
            assert "reload failed" not in listener.received[ready_again].fields.get("STATUS", "")
            wait_for(
                lambda: listener.count("WATCHDOG", "1", after=ready_again) >= 3,
                20,
                "WATCHDOG=1 after the reload",
            )
            assert "reload_applied" in proc.event_names()
            # The config did not change: the one connection stayed open.
            assert up.connections == 1

            stopping = stop_cleanly(proc, listener)
            assert stopping > ready_again > reloading
            received = listener.received
            # No second READY=1 before the reload, none after STOPPING=1.
            readies = [i for i, d in enumerate(received) if d.has("READY", "1")]
            assert readies == [ready, ready_again]


def test_ready_comes_while_the_upstream_is_down(tmp_path: Path, listener: NotifyListener) -> None:
    url = f"ws://127.0.0.1:{free_port()}/"
    write_config(tmp_path, reference_config(url, tmp_path))
    with run_daemon(tmp_path, listener) as proc:
        ready = listener.wait("READY", "1", timeout=START_TIMEOUT, sender=proc)
        assert listener.received[ready].fields["STATUS"].startswith("0/1 connected")
        wait_for(
            lambda: listener.count("WATCHDOG", "1", after=ready) >= 2,
            START_TIMEOUT,
            "WATCHDOG=1 with the upstream down",
        )
        assert proc.running()
        stop_cleanly(proc, listener)


def test_no_watchdog_pings_without_watchdog_usec(tmp_path: Path, listener: NotifyListener) -> None:
    url = f"ws://127.0.0.1:{free_port()}/"
    write_config(tmp_path, reference_config(url, tmp_path))
    env = daemon_environ(listener.path, None)
    with daemon(tmp_path / "wsroute.toml", tmp_path / "daemon.log", env) as proc:
        listener.wait("READY", "1", timeout=START_TIMEOUT, sender=proc)
        time.sleep(0.5)  # more than two ping intervals of the other tests
        stop_cleanly(proc, listener)
    assert listener.count("WATCHDOG") == 0


# --------------------------------------------------------------------------- watchdog


@pytest.mark.slow
def test_a_blocked_event_loop_stops_the_watchdog_and_children_get_no_notify_socket(
    tmp_path: Path, listener: NotifyListener, plugins: Path
) -> None:
    record = tmp_path / "blocker.json"
    blocker = f"""
[handlers.blocker]
plugin = "probes:Blocker"
timeout = "30s"
sleep = "{BLOCK_SECONDS}s"
skip = 20
record = "{record}"
"""
    with upstream(tmp_path, tick_interval=0.05) as up:
        text = reference_config(
            up.url,
            tmp_path,
            tick_handlers=["archive", "blocker"],
            daemon_extra=f'plugin_paths = ["{plugins}"]',
            handlers_extra=blocker,
        )
        write_config(tmp_path, text)
        # A variable the child must inherit: its absence would prove nothing otherwise.
        with run_daemon(tmp_path, listener, WSROUTE_TEST_MARK="1") as proc:
            ready = listener.wait("READY", "1", timeout=START_TIMEOUT, sender=proc)
            blocked: dict[str, Any] = json.loads(
                wait_for(lambda: record.exists() and record.read_text(), 30, "the blocker's record")
            )
            start, end = blocked["start"], blocked["end"]
            # The pings resume once the loop is free again.
            wait_for(
                lambda: sum(1 for d in listener.received if d.has("WATCHDOG") and d.at > end) >= 3,
                20,
                "WATCHDOG=1 after the block",
            )
            pings = [d.at for d in listener.received[ready:] if d.has("WATCHDOG", "1")]
            before = [t for t in pings if t <= end]
            after = [t for t in pings if t > end]
            # Nothing while the loop was blocked (a datagram sent just before the
            # block may be read a little later by our thread).
            assert not [t for t in pings if start + 0.2 < t <= end], listener.describe()
            # The loop was pinging steadily before the block (ticks come every 50 ms).
            assert len(before) >= 3, listener.describe()
            gap = after[0] - before[-1]
            assert gap >= BLOCK_SECONDS * 0.75, listener.describe()
            stop_cleanly(proc, listener)

    # Neither the plugin nor a process it starts sees the notify socket or the watchdog.
    for seen in (blocked["child_environ"], blocked["plugin_environ"]):
        assert "WSROUTE_TEST_MARK" in seen
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            assert name not in seen


def test_plugin_modules_are_imported_without_the_notify_socket(
    tmp_path: Path, listener: NotifyListener, plugins: Path
) -> None:
    record = tmp_path / "import.json"
    handler = f"""
[handlers.slow]
plugin = "probes:Slow"
record = "{tmp_path}/slow.count"
"""
    url = f"ws://127.0.0.1:{free_port()}/"
    text = reference_config(
        url,
        tmp_path,
        tick_handlers=["slow"],
        daemon_extra=f'plugin_paths = ["{plugins}"]',
        handlers_extra=handler,
    )
    write_config(tmp_path, text)
    with run_daemon(tmp_path, listener, WSROUTE_TEST_IMPORT_RECORD=str(record)) as proc:
        listener.wait("READY", "1", timeout=START_TIMEOUT, sender=proc)
        stop_cleanly(proc, listener)
    seen = json.loads(record.read_text())
    assert "WSROUTE_TEST_IMPORT_RECORD" in seen
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        assert name not in seen


# --------------------------------------------------------------------------- drain


@pytest.mark.slow
def test_a_long_drain_extends_the_stop_timeout(
    tmp_path: Path, listener: NotifyListener, plugins: Path
) -> None:
    handled = tmp_path / "slow.count"
    slow = f"""
[handlers.slow]
plugin = "probes:Slow"
delay = "300ms"
record = "{handled}"
"""
    drain_budget = 4.0
    with upstream(tmp_path, tick_interval=0.01) as up:
        text = reference_config(
            up.url,
            tmp_path,
            tick_handlers=["slow"],
            daemon_extra=f'plugin_paths = ["{plugins}"]\nshutdown_timeout = "{drain_budget:g}s"',
            handlers_extra=slow,
        )
        write_config(tmp_path, text)
        with run_daemon(tmp_path, listener) as proc:
            listener.wait("READY", "1", timeout=START_TIMEOUT, sender=proc)
            wait_for(lambda: handled.exists(), 20, "the slow handler's first message")
            time.sleep(1.0)  # ~100 ticks arrive, ~3 are handled: the queue holds the rest
            stopping = stop_cleanly(proc, listener)
            exited = time.monotonic()

    extends = [
        (d.at, int(d.fields["EXTEND_TIMEOUT_USEC"]) / 1_000_000)
        for d in listener.received[stopping:]
        if d.has("EXTEND_TIMEOUT_USEC")
    ]
    # The drain runs for the whole budget: the daemon asked for time at its start
    # and again before each extension ran out, and exited within the last one.
    assert len(extends) >= 2, listener.describe()
    assert extends[0][1] >= drain_budget
    for (at, seconds), (next_at, _) in itertools.pairwise(extends):
        assert next_at - at < seconds
    last_at, last_seconds = extends[-1]
    assert exited < last_at + last_seconds + 1.0  # + the time our wait took to notice
    assert all(not d.has("EXTEND_TIMEOUT_USEC") for d in listener.received[:stopping])
    totals = next(
        e
        for e in proc.events()
        if e.get("event") == "delivery_totals" and e.get("handler") == "slow"
    )
    assert totals["dead_lettered"] > 0  # the queue was not empty when the budget ran out
    assert totals["in_flight"] == 0


# --------------------------------------------------------------------------- reload


def test_reload_of_an_invalid_file_keeps_running_and_says_so(
    tmp_path: Path, listener: NotifyListener
) -> None:
    with upstream(tmp_path) as up:
        config = write_config(tmp_path, reference_config(up.url, tmp_path))
        with run_daemon(tmp_path, listener) as proc:
            listener.wait("READY", "1", timeout=START_TIMEOUT, sender=proc)
            wait_for(lambda: jsonl_lines(tmp_path / "archive.jsonl") >= 10, 20, "ticks archived")
            assert up.connections == 1
            config.write_text(config.read_text().replace('plugin = "jsonl"', "plugin = 7", 1))

            _, ready = reload(proc, listener)
            assert "reload failed" in listener.received[ready].fields["STATUS"]
            # The old config keeps running on the same connection.
            archived = jsonl_lines(tmp_path / "archive.jsonl")
            wait_for(
                lambda: jsonl_lines(tmp_path / "archive.jsonl") >= archived + 10,
                20,
                "ticks archived after the failed reload",
            )
            assert proc.running()
            assert up.connections == 1
            names = proc.event_names()
            assert "reload_failed" in names
            assert "reload_applied" not in names
            stop_cleanly(proc, listener)


@pytest.mark.slow
def test_the_status_line_keeps_saying_the_reload_failed(
    tmp_path: Path, listener: NotifyListener
) -> None:
    with upstream(tmp_path) as up:
        config = write_config(tmp_path, reference_config(up.url, tmp_path))
        good = config.read_text()
        with run_daemon(tmp_path, listener) as proc:
            listener.wait("READY", "1", timeout=START_TIMEOUT, sender=proc)
            wait_for(lambda: jsonl_lines(tmp_path / "archive.jsonl") >= 10, 20, "ticks archived")
            config.write_text(good.replace('plugin = "jsonl"', "plugin = 7", 1))
            _, ready = reload(proc, listener)
            assert listener.received[ready].fields["STATUS"].startswith("reload failed; ")
            # The next periodic update (every 5 s; ticks keep changing the counters).
            later = listener.wait("STATUS", after=ready + 1, timeout=20)
            assert listener.received[later].fields["STATUS"].startswith("reload failed; ")
            # A good reload clears it.
            config.write_text(good)
            _, ready = reload(proc, listener)
            assert not listener.received[ready].fields["STATUS"].startswith("reload failed")
            stop_cleanly(proc, listener)


def test_reload_of_a_changed_route_keeps_the_connection(
    tmp_path: Path, listener: NotifyListener
) -> None:
    second = f'\n[handlers.second]\nplugin = "jsonl"\npath = "{tmp_path}/second.jsonl"\n'
    with upstream(tmp_path) as up:
        config = write_config(tmp_path, reference_config(up.url, tmp_path))
        with run_daemon(tmp_path, listener) as proc:
            listener.wait("READY", "1", timeout=START_TIMEOUT, sender=proc)
            wait_for(lambda: jsonl_lines(tmp_path / "archive.jsonl") >= 10, 20, "ticks archived")
            assert up.connections == 1
            config.write_text(
                reference_config(
                    up.url, tmp_path, tick_handlers=["archive", "second"], handlers_extra=second
                )
            )

            _, ready = reload(proc, listener)
            assert "reload failed" not in listener.received[ready].fields.get("STATUS", "")
            wait_for(
                lambda: jsonl_lines(tmp_path / "second.jsonl") >= 10, 20, "the new route applied"
            )
            assert up.connections == 1
            applied = next(e for e in proc.events() if e.get("event") == "reload_applied")
            assert applied["connections_kept"] == ["up"]
            assert applied["handlers_started"] == ["second"]
            stop_cleanly(proc, listener)
