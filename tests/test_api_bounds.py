"""Every API client bounded, and reloads that cannot be turned against the operator.

Real ``wsroute run`` daemons (the helpers of ``test_api``), real tap clients
that stall or read, real symlinks in the socket's folder, real ports held by
another process. Each test tries to break one promise of docs/observability.md:
a stalled tap holds its byte bound (peak RSS against the idle daemon's), the
next client past ``max_clients`` / ``max_taps`` is refused with a status, a
reload never chmods through a symlink, a ``tap_over_tcp`` turned off closes the
taps already open on TCP, the API moves between hosts on one port, STATUS=
never goes backwards, and ``check`` refuses what ``run`` would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from test_api import Run, clients, daemon, frame, status, stop, until, up
from test_api import run as run  # the fixture
from test_reload import SECOND, two_upstreams, write
from test_reload import daemon as in_process
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from wsroute.api.tap import BATCH_BYTES
from wsroute.testing import ScriptedUpstream, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WSROUTE = str(Path(sys.executable).with_name("wsroute"))
MiB = 2**20


def kib(path: str, field: str) -> int:
    """A ``/proc/PID/status`` figure in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in {path}")


def configure(run: Run, *, api: str = "", daemon_extra: str = "", **kwargs: Any) -> None:
    """The test_api config, with lines added to [daemon.api] and [daemon]."""
    run.write(**kwargs)
    text = run.config.read_text()
    text = text.replace('socket_mode = "0640"\n', f'socket_mode = "0640"\n{api}\n')
    text = text.replace('dead_letter = "dlq"\n', f'dead_letter = "dlq"\n{daemon_extra}\n', 1)
    run.config.write_text(text)


async def reload(proc: Any, run: Run, event: str = "reload_applied", count: int = 1) -> None:
    """SIGHUP, then wait for the ``count``-th ``event`` line in the log."""
    before = sum(1 for e in run.log() if e.get("event") == event)
    proc.send_signal(signal.SIGHUP)

    async def logged() -> bool:
        return sum(1 for e in run.log() if e.get("event") == event) >= before + count

    await until(f"{event} after SIGHUP", logged, 15)


# -- byte bounds -------------------------------------------------------------------------------


async def test_stalled_taps_hold_their_byte_bound(run: Run) -> None:
    taps, frame_size = 4, MiB
    buffer = 4 * MiB
    budget = 16 * MiB
    upstream = ScriptedUpstream()
    async with upstream.serve() as url:
        run.url = url
        configure(
            run,
            delay="0s",
            api=f'tap_buffer = "{buffer // MiB}MiB"',
            daemon_extra=f'memory_budget = "{budget // MiB}MiB"',
        )
        run.config.write_text(
            run.config.read_text().replace(
                'close_timeout = "500ms"', 'close_timeout = "500ms"\nmax_frame_size = "2MiB"'
            )
        )
        async with daemon(run) as proc, clients(run) as (_, unix):
            await until("the API", lambda: up(unix), 15)
            await until("connected", lambda: _connected(unix), 15)
            big = frame("d", 0, pad=frame_size)
            for _ in range(5):  # warm: a message of this size through every part once
                await upstream.send(big)
            await until("warm", lambda: _handled(unix, "dropper", 5), 15)
            idle = kib(f"/proc/{proc.pid}/status", "VmRSS")
            stalled = [await _tap(run, max_queue=1) for _ in range(taps)]  # never read
            # A flood of 1 MiB frames for less than the write timeout (5 s): the taps
            # stay connected and stalled the whole time.
            end = anyio.current_time() + 3.5
            sent = 0
            while anyio.current_time() < end:
                await upstream.send(big)
                sent += 1
                await (
                    anyio.lowlevel.checkpoint()
                )  # a send into room does not yield: let the timers run
            await until("the flood handled", lambda: _settled(unix, "dropper"), 20)
            # enough to break a bound of 1,000 records a tap, as it was (4 x 60 MiB)
            assert sent >= 60
            peak = kib(f"/proc/{proc.pid}/status", "VmHWM")
            # Documented: per tap its buffer, one batch and one message in the socket's
            # buffer; the handlers' queues within memory_budget.
            bound = taps * (buffer + BATCH_BYTES + 3 * frame_size) + budget
            assert peak - idle <= bound + 32 * MiB, (peak - idle) / MiB
            for ws in stalled:
                ws.transport.abort()
            assert await stop(proc) == 0


async def _connected(unix: httpx.AsyncClient) -> bool:
    return bool((await status(unix))["connections"]["up"]["state"] == "connected")


async def _handled(unix: httpx.AsyncClient, name: str, count: int) -> bool:
    h = (await status(unix))["handlers"][name]
    return bool(h["handled"] + h["dropped"] >= count)


async def _settled(unix: httpx.AsyncClient, name: str) -> bool:
    return bool((await status(unix))["handlers"][name]["in_flight"] == 0)


async def _tap(run: Run, query: str = "", **kwargs: Any) -> ClientConnection:
    return await unix_connect(str(run.sock), f"ws://wsroute/tap{query}", **kwargs)


async def test_a_reading_tap_gets_every_record_once_and_drops_are_told(run: Run) -> None:
    """Records are built once and shared: two taps get the same, complete, ordered stream;
    a third, stalled, is told how many it missed when it reads again."""
    upstream = ScriptedUpstream()
    async with upstream.serve() as url:
        run.url = url
        configure(run, delay="0s", api='tap_buffer = "64KiB"')
        async with daemon(run) as proc, clients(run) as (_, unix):
            await until("the API", lambda: up(unix), 15)
            await until("connected", lambda: _connected(unix), 15)
            readers = [await _tap(run, "?key=a") for _ in range(2)]
            stalled = await _tap(run, "?key=a", max_queue=1)
            count = 400
            got: list[list[str]] = [[], []]

            async def read(i: int) -> None:
                while len(got[i]) < count:
                    got[i].append(await readers[i].recv())

            async with anyio.create_task_group() as tg:
                for i in range(2):
                    tg.start_soon(read, i)
                # Ten at a time, well within the readers' 64 KiB: none of theirs is dropped.
                with anyio.fail_after(30):
                    for n in range(count):
                        await upstream.send(frame("a", n, pad=1000))
                        if n % 10 == 9:
                            while min(len(g) for g in got) <= n:
                                await anyio.sleep(0.005)
            assert got[0] == got[1]
            assert [json.loads(r)["body"]["n"] for r in got[0]] == list(range(count))
            # The stalled one: 64 KiB holds far fewer than 400 records of ~4 KiB counted.
            # It reads now: what was buffered, then, before the next record that fits (sent
            # until one does), how many it missed.
            notices: list[int] = []
            seen: list[int] = []

            async def read_stalled() -> None:
                while True:
                    record = json.loads(await stalled.recv())
                    if record.get("event") == "tap_dropped":
                        notices.append(record["count"])
                    else:
                        seen.append(record["body"]["n"])

            async with anyio.create_task_group() as tg:
                tg.start_soon(read_stalled)
                with anyio.fail_after(10):
                    extra = count
                    while not any(n >= count for n in seen):
                        await upstream.send(frame("a", extra))
                        extra += 1
                        await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
            assert notices
            assert 0 < notices[0] < count
            assert len(seen) + notices[0] >= count  # every one accounted for up to then
            for ws in [*readers, stalled]:
                await ws.close()
            assert await stop(proc) == 0


# -- how many ----------------------------------------------------------------------------------


async def test_the_next_tap_and_the_next_client_are_refused_with_a_status(run: Run) -> None:
    upstream = ScriptedUpstream()
    async with upstream.serve() as url:
        run.url = url
        configure(run, api="max_taps = 2\nmax_clients = 4")
        async with daemon(run) as proc, clients(run) as (tcp, unix):
            await until("the API", lambda: up(unix), 15)
            first, second = await _tap(run), await _tap(run)
            with pytest.raises(InvalidStatus) as refused:
                await _tap(run)
            assert refused.value.response.status_code == 503
            assert b"max_taps = 2" in refused.value.response.body
            await first.close()
            await until("the tap closed", lambda: _taps_closed(run, 1), 10)
            third = await _tap(run)  # room again
            # Two taps and two idle connections: four clients, the limit. The next
            # request is answered 503 and closed; the daemon goes on.
            idle = []
            for _ in range(2):
                sock = socket.create_connection(("127.0.0.1", run.port))
                idle.append(sock)
            await until("the idle clients counted", lambda: _clients_refused(tcp), 10)
            for sock in idle:
                sock.close()
            await until("room again", lambda: up(tcp), 10)
            for ws in (second, third):
                await ws.close()
            assert await stop(proc) == 0


async def _taps_closed(run: Run, count: int) -> bool:
    return sum(1 for e in run.log() if e.get("event") == "tap_closed") >= count


async def _clients_refused(tcp: httpx.AsyncClient) -> bool:
    answer = await tcp.get("/health")
    return answer.status_code == 503 and "max_clients = 4" in answer.text


# -- reloads -----------------------------------------------------------------------------------


async def test_a_reload_never_chmods_through_a_symlink(run: Run, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("private")
    victim.chmod(0o600)
    upstream = ScriptedUpstream()
    async with upstream.serve() as url:
        run.url = url
        configure(run)
        async with daemon(run) as proc, clients(run) as (tcp, _):
            await until("the API", lambda: up(tcp), 15)
            assert stat.S_IMODE(os.lstat(run.sock).st_mode) == 0o640
            # Someone with write access to the folder swaps the socket for a link.
            os.unlink(run.sock)
            os.symlink(victim, run.sock)
            run.config.write_text(
                run.config.read_text().replace('socket_mode = "0640"', 'socket_mode = "0666"')
            )
            await reload(proc, run)
            assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600
            assert any(e.get("event") == "api_socket_mode_not_set" for e in run.log())
            assert await up(tcp)  # the daemon goes on
            # and a reload that changes nothing touches nothing either
            await reload(proc, run)
            assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600
            assert run.sock.is_symlink()
            assert await stop(proc) == 0
    assert victim.read_text() == "private"


def test_a_symlink_at_the_socket_path_is_refused_at_start(run: Run, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("x")
    target.chmod(0o600)
    run.url = "ws://127.0.0.1:1/"
    configure(run)
    os.symlink(target, run.sock)
    for command in ("check", "run"):
        result = subprocess.run(
            [WSROUTE, command, "-c", str(run.config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 78, result.stderr
        assert (
            f"daemon.api.listen: cannot listen on unix:{run.sock}: a file that is not a socket"
            in (result.stderr)
        )
        assert result.stderr.count("daemon.api.listen") == 1, result.stderr
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert os.path.islink(run.sock)


async def test_tap_over_tcp_turned_off_closes_the_open_tcp_taps(run: Run) -> None:
    upstream = ScriptedUpstream()
    async with upstream.serve() as url:
        run.url = url
        configure(run, api="tap_over_tcp = true")
        async with daemon(run) as proc, clients(run) as (tcp, unix):
            await until("the API", lambda: up(tcp), 15)
            await until("connected", lambda: _connected(unix), 15)
            over_tcp = await connect(f"ws://127.0.0.1:{run.port}/tap?key=a")
            local = await _tap(run, "?key=a")
            await upstream.send(frame("a", 0))
            for ws in (over_tcp, local):
                with anyio.fail_after(5):
                    assert json.loads(await ws.recv())["body"]["n"] == 0
            configure(run)  # tap_over_tcp back to its default, false
            await reload(proc, run)
            with anyio.fail_after(5):
                assert await _close_code(over_tcp) == 1008
            await upstream.send(frame("a", 1))
            with anyio.fail_after(5):
                assert json.loads(await local.recv())["body"]["n"] == 1
            assert (await tcp.get("/status")).status_code == 403
            await local.close()
            assert await stop(proc) == 0


async def _close_code(ws: ClientConnection) -> int | None:
    """Read until the connection closes; the code of the close frame it got."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


async def test_the_api_moves_between_hosts_on_one_port(run: Run) -> None:
    upstream = ScriptedUpstream()
    async with upstream.serve() as url:
        run.url = url
        port = run.port
        unix = f"unix:{run.sock}"
        configure(run, listen=[f"127.0.0.1:{port}", unix])
        async with daemon(run) as proc, clients(run) as (tcp, _):
            await until("the API", lambda: up(tcp), 15)
            configure(run, listen=[f"0.0.0.0:{port}", unix])
            await reload(proc, run)
            assert any(e.get("event") == "api_moving" for e in run.log())
            assert await up(tcp)
            async with httpx.AsyncClient(timeout=5) as other:  # every host: 127.0.0.2 too
                assert (await other.get(f"http://127.0.0.2:{port}/health")).status_code == 200
            # Back, but with an address that cannot be opened: the reload fails after
            # it made way, and the old address is open again.
            configure(run, listen=[f"127.0.0.1:{port}", unix, "unix:/nonexistent/api.sock"])
            await reload(proc, run, "reload_invalid")
            assert any(e.get("event") == "api_restored" for e in run.log())
            async with httpx.AsyncClient(timeout=5) as other:
                assert (await other.get(f"http://127.0.0.2:{port}/health")).status_code == 200
            assert await up(tcp)
            assert await stop(proc) == 0


async def test_the_status_line_never_goes_backwards_across_reloads(tmp_path: Path) -> None:
    path = tmp_path / "wsroute.toml"
    async with two_upstreams() as (up_a, up_b):
        write(path, up_a.url, up_b.url)
        async with in_process(path) as service:

            def handled() -> int:
                match = re.search(r"handled=(\d+)", service.status_line())
                assert match is not None
                return int(match.group(1))

            await wait_until(lambda: handled() >= 50)
            seen = handled()
            # "first" goes away, "second" takes its route: its count starts at 0
            write(path, up_a.url, up_b.url, ticks='"second"', second=SECOND)
            assert await service.reload() is True
            for _ in range(20):
                now = handled()
                assert now >= seen, (now, seen)
                seen = now
                await anyio.sleep(0.02)
            await wait_until(lambda: handled() >= seen + 20)


# -- check = run -------------------------------------------------------------------------------


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WSROUTE, "check", "-c", str(config)], capture_output=True, text=True, timeout=30
    )


def test_check_refuses_the_api_addresses_run_refuses(run: Run, tmp_path: Path) -> None:
    run.url = "ws://127.0.0.1:1/"
    in_the_way = tmp_path / "file"
    in_the_way.write_text("")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    cases = {
        f"unix:{tmp_path}/missing/api.sock": "its folder",
        f"unix:{in_the_way}/api.sock": "is not a folder",
        f"unix:{in_the_way}": "a file that is not a socket is in the way",
        f"unix:{tmp_path}": "a file that is not a socket is in the way",
        f"127.0.0.1:{taken}": "Address already in use",
        "unix:/tmp/" + "x" * 100 + "/api.sock": "at most 107 bytes",
    }
    with busy:
        for address, words in cases.items():
            configure(run, listen=[address])
            result = _check(run.config)
            assert result.returncode == 78, (address, result.stdout)
            line = result.stderr.strip()
            assert f"daemon.api.listen: cannot listen on {address}: " in line
            assert words in line, line
            assert line.count("daemon.api.listen") == 1


async def test_check_passes_for_the_addresses_the_running_daemon_holds(run: Run) -> None:
    upstream = ScriptedUpstream()
    async with upstream.serve() as url:
        run.url = url
        configure(run)
        async with daemon(run) as proc, clients(run) as (tcp, _):
            await until("the API", lambda: up(tcp), 15)
            result = await anyio.to_thread.run_sync(_check, run.config)
            assert result.returncode == 0, result.stderr
            # moving to every host on its port, before the reload that does it
            configure(run, listen=[f"0.0.0.0:{run.port}", f"unix:{run.sock}"])
            result = await anyio.to_thread.run_sync(_check, run.config)
            assert result.returncode == 0, result.stderr
            assert await stop(proc) == 0
    # and once it is gone, a stale socket file is no problem either
    result = _check(run.config)
    assert result.returncode == 0, result.stderr
