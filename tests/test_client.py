"""The library face (``wsroute.connect``, ``wsroute.sync``) and ``on_close``, against real servers.

Every server here is a real WebSocket server on 127.0.0.1: the reference
upstream, the scripted one, or :class:`Recording`, which keeps what each client
sent, in order, with the close frame (or its absence) as the last entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
import os
import struct
import sys
import types
import typing
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import anyio
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import wsroute
import wsroute.sync
from wsroute.client import ClientOptions
from wsroute.config import ConnectionSection, load, loads
from wsroute.demo import ReferenceUpstream, demo_config_text
from wsroute.plugin import Duration, Size
from wsroute.service import Service, plan
from wsroute.testing import ScriptedUpstream, build_codec, wait_until
from wsroute.tls import TlsOptions

from conftest import REPO, running

pytestmark = pytest.mark.anyio

RELEASE = struct.pack("<ib", 0, 0)
TRANSPORTS = ["websockets"]
STRUCT_OPTIONS = {
    "header": "<i",
    "fields": ["opcode"],
    "key": "opcode",
    "text": "json",
    "text_key": "type",
}
LOGIN: dict[str, Any] = {"json": {"role": "admin", "user_id": "lib"}}
SUBSCRIBE: dict[str, Any] = {"struct": ("<i", [2]), "json": ["first", "test"]}


class Recording:
    """A WebSocket server that keeps, per client, every frame it sent and how it ended.

    ``sessions[i]`` is the i-th client's list: its frames in order, then
    ``("close", code)`` for the close frame it sent, or ``("close", None)``
    when the connection ended without one. ``hang_up`` makes the server close
    each connection (close frame 1001) after that many frames.
    """

    def __init__(self, hang_up: int | None = None) -> None:
        self.sessions: list[list[Any]] = []
        self.hang_up = hang_up
        self.url = ""

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        async with serve(self._session, "127.0.0.1", 0) as server:
            self.url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}/"
            yield self.url

    async def _session(self, ws: ServerConnection) -> None:
        events: list[Any] = []
        self.sessions.append(events)
        try:
            async for data in ws:
                events.append(data)
                if self.hang_up is not None and len(events) >= self.hang_up:
                    await ws.close(1001, "going away")
        except ConnectionClosed:
            pass
        rcvd = ws.protocol.close_rcvd
        events.append(("close", None if rcvd is None else int(rcvd.code)))

    def ended(self, index: int = 0) -> bool:
        return (
            len(self.sessions) > index
            and bool(self.sessions[index])
            and (isinstance(self.sessions[index][-1], tuple))
        )


# -- messages, reconnects, keepalive -------------------------------------------


async def test_messages_arrive_decoded() -> None:
    upstream = ReferenceUpstream(tick_interval=0.01)
    async with (
        upstream.serve() as url,
        wsroute.connect(
            url,
            codec="struct",
            codec_options=STRUCT_OPTIONS,
            on_connect=[LOGIN, SUBSCRIBE],
            ready_timeout=10,
        ) as conn,
    ):
        assert conn.state is wsroute.ConnectionState.CONNECTED
        got: list[wsroute.Message] = []
        with anyio.fail_after(10):
            async for message in conn:
                got.append(message)
                if message.key == 1 and len(got) >= 4:
                    break
    assert got[0].key == "welcome"
    assert got[0].body == {"type": "welcome", "user_id": "lib"}
    assert got[1].key == 2
    assert got[1].fields == {"opcode": 2}
    assert got[1].body == {"subscribed": ["first", "test"]}
    assert got[-1].body["service"] == "first"
    assert all(m.connection == "client" for m in got)
    assert [m.seq for m in got] == list(range(1, len(got) + 1))


async def test_a_codec_instance_and_sending_frames() -> None:
    upstream = ReferenceUpstream(tick_interval=0)
    codec = build_codec("struct", STRUCT_OPTIONS)  # any object with decode() and encode()
    async with (
        upstream.serve() as url,
        wsroute.connect(url, codec=codec, name="exchange", ready_timeout=10) as conn,
    ):
        await conn.send(json={"role": "admin", "user_id": "sender"})
        await conn.send(struct=("<i", [2]), json=["second"])
        with anyio.fail_after(10):
            replies = [await conn.receive(), await conn.receive()]
    assert [m.key for m in replies if m] == ["welcome", 2]
    assert replies[1] is not None
    assert replies[1].connection == "exchange"
    assert upstream.commands == [(2, ["second"])]


async def test_a_dropped_connection_reconnects_and_replays_on_connect_and_subscriptions() -> None:
    upstream = ReferenceUpstream(tick_interval=0.02, drop_first_after=0.5)
    async with (
        upstream.serve() as url,
        wsroute.connect(
            url,
            codec="struct",
            codec_options=STRUCT_OPTIONS,
            on_connect=[LOGIN, SUBSCRIBE, {"expect": {"key": 2, "timeout": 5}}],
            reconnect={"initial": 0.05, "max": 0.2},
            lifecycle=True,
            ready_timeout=10,
        ) as conn,
    ):
        await conn.subscribe("second", struct=("<i", [2]), json=["second"])
        keys: list[Any] = []
        with anyio.fail_after(15):
            async for message in conn:
                keys.append(message.key)
                if message.key == 1 and message.body["connection"] == 2:
                    break
        assert conn.stats.reconnects == 1
    assert [login["user_id"] for login in upstream.logins] == ["lib", "lib"]
    subscribed = [body for opcode, body in upstream.commands if opcode == 2]
    # The runtime subscription is sent once at once, then replayed after on_connect.
    assert subscribed == [["first", "test"], ["second"], ["first", "test"], ["second"]]
    assert keys.count("$connected") == 2
    assert keys.count("$disconnected") == 1
    assert keys.index("$disconnected") < len(keys) - keys[::-1].index("$connected") - 1


async def test_a_silent_peer_is_detected() -> None:
    upstream = ScriptedUpstream()
    async with (
        upstream.serve() as url,
        wsroute.connect(
            url,
            ping_interval=0.1,
            ping_timeout=0.2,
            reconnect={"initial": 0.05, "max": 0.1},
            ready_timeout=10,
        ) as conn,
    ):
        upstream.stall()  # reads nothing and answers no ping from now on
        await wait_until(lambda: conn.stats.reconnects >= 1, timeout=10)
        assert conn.stats.last_error is not None
        assert "keepalive_timeout" in conn.stats.last_error
        await conn.wait_connected()
        assert upstream.connections == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_slow_consumer_pauses_reading_and_memory_stays_flat(transport: str) -> None:
    frame = b"x" * 32_768
    total = 1500  # 48 MiB, if nothing held the server back
    sent = 0

    async def flood(ws: ServerConnection) -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionClosed):
            for _ in range(total):
                await ws.send(frame)
                sent += 1
            await ws.wait_closed()

    async with serve(flood, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}/"
        async with wsroute.connect(
            url,
            codec="bytes",
            queue=10,
            transport=transport,
            compression="none",  # the frames would deflate to nearly nothing
            ping_interval=0.2,
            ping_timeout=0.2,
            ready_timeout=10,
        ) as conn:
            # Not iterating: the buffer fills, the reader waits, the socket is not read,
            # and the server's sends block once the kernel's buffers are full.
            await wait_until(lambda: conn.buffered >= 10, timeout=10)
            stalled_at = -1
            with anyio.fail_after(20):
                while sent != stalled_at:  # unchanged over a whole second: stalled
                    stalled_at = sent
                    await anyio.sleep(1.0)
            assert sent < total
            assert conn.buffered == 10  # the bound; not one message more
            # The keepalive knew the reader was paused: still the first connection.
            assert conn.stats.connects == 1
            seqs = []
            with anyio.fail_after(30):
                async for message in conn:
                    assert conn.buffered <= 10
                    seqs.append(message.seq)
                    if len(seqs) == total:
                        break
    assert sent == total
    assert seqs == list(range(1, total + 1))


async def test_an_exception_in_the_block_propagates_as_it_is_after_the_close() -> None:
    server = Recording()
    async with server.serve() as url:
        with pytest.raises(KeyError, match="mine"):
            async with wsroute.connect(url, on_close=[{"text": "bye"}], ready_timeout=10):
                raise KeyError("mine")
        await wait_until(server.ended)
    assert server.sessions == [["bye", ("close", 1000)]]


# -- options -----------------------------------------------------------------


def test_every_connection_key_is_a_keyword_argument() -> None:
    # Each key given its default as a Python value (a Duration, a dataclass...) comes back equal.
    defaults = ConnectionSection(url="ws://127.0.0.1:1/")
    keys = [f.name for f in dataclasses.fields(ConnectionSection) if f.name not in ("url", "codec")]
    client = wsroute.connect(defaults.url, **{key: getattr(defaults, key) for key in keys})
    for key in keys:
        assert getattr(client.options, key) == getattr(defaults, key), key


def _python_annotation(tp: Any) -> Any:
    """The annotation a keyword of connect() has for a ClientOptions field of type ``tp``."""
    if tp is Duration:
        return float | str
    if tp is Size:
        return int | str
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        arms = [_python_annotation(a) for a in args if a is not type(None)]
        return functools.reduce(operator.or_, [*arms, type(None)])
    if origin is list and dataclasses.is_dataclass(args[0]):
        return Sequence[Mapping[str, Any]]
    if origin is list:
        return Sequence[args[0]]  # type: ignore[valid-type]
    if origin is dict:
        return Mapping[args[0], args[1]]  # type: ignore[valid-type]
    if tp is TlsOptions:
        return TlsOptions | Mapping[str, Any]
    if dataclasses.is_dataclass(tp):
        return Mapping[str, Any]
    return tp


def test_connect_options_are_the_option_table_as_python_values() -> None:
    # The TypedDict mypy checks connect()'s keywords against cannot drift from the
    # dataclass the converter checks them against: same keys, matching types.
    table = typing.get_type_hints(ClientOptions)
    typed = typing.get_type_hints(wsroute.ConnectOptions)
    assert set(typed) == set(table) - {"url", "codec"}
    assert {k: typed[k] for k in typed} == {k: _python_annotation(table[k]) for k in typed}
    assert not wsroute.ConnectOptions.__required_keys__


def test_every_bad_argument_is_reported_at_once_codec_options_included() -> None:
    with pytest.raises(wsroute.ConfigError) as caught:
        wsroute.connect(
            "ws://127.0.0.1:1/",
            codec="struct",
            codec_options={"heder": "<i"},
            ping_interval="x",
            reconect={},
        )
    assert [(i.path, i.message) for i in caught.value.issues] == [
        ("codec_options.heder", 'unknown key (did you mean "header"?)'),
        ("codec_options.header", "missing required key"),
        ("reconect", 'unknown key (did you mean "reconnect"?)'),
        ("ping_interval", 'expected a duration like "30s", got "x"'),
    ]
    with pytest.raises(wsroute.ConfigError) as caught:
        wsroute.connect("ws://127.0.0.1:1/", codec=3, queue=0)  # type: ignore[arg-type]
    assert [i.path for i in caught.value.issues] == ["codec", "queue"]


def test_python_values_are_taken_as_the_file_writes_them() -> None:
    client = wsroute.connect(
        "ws://127.0.0.1:1/",
        ping_interval=2.5,
        close_timeout="1s",
        reconnect={"initial": 0.1, "max": 1},
        on_connect=[SUBSCRIBE, {"expect": {"key": 2, "timeout": 3}}],
        on_close=[{"raw": RELEASE}, {"text": "bye"}],
        every=[{"interval": 10, "json": {"op": "ping"}}],
        headers={"X-Token": "t"},
    )
    options = client.options
    assert options.ping_interval == 2.5
    assert options.close_timeout == 1.0
    assert (options.reconnect.initial, options.reconnect.max) == (0.1, 1.0)
    assert options.on_connect[0].outgoing().struct == ("<i", (2,))
    assert options.on_connect[1].expect is not None
    assert options.on_connect[1].expect.timeout == 3.0
    assert options.on_close[0].raw == RELEASE
    assert options.every[0].interval == 10.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ping_interval": "x"}, 'ping_interval: expected a duration like "30s", got "x"'),
        ({"ping_interval": -1}, "ping_interval: expected a duration"),
        ({"ping_intervall": 5}, 'ping_intervall: unknown key (did you mean "ping_interval"?)'),
        ({"queue": 0}, "queue: must be at least 1, got 0"),
        ({"max_frame_size": 0}, "max_frame_size"),
        ({"reconnect": {"initial": 0}}, "reconnect.initial: must be above 0"),
        ({"compression": "zip"}, "compression: expected one of"),
        ({"on_close": [{"json": 1, "text": "a"}]}, "on_close[0]: a closing frame is exactly one"),
        ({"on_connect": [{"struct": ("<i", ["x"])}]}, "on_connect[0].struct"),
        ({"codec": 3}, "codec: expected a codec or a codec plugin's name, got 3"),
        ({"codec": "no-such-codec"}, "codec: "),
        ({"codec": "struct", "codec_options": {"heder": "<i"}}, "codec_options.heder"),
        ({"codec": wsroute.JsonCodec(), "codec_options": {"a": 1}}, "codec_options: only with"),
        ({"tls": {"ca_file": "/nonexistent/ca.pem"}}, "tls.ca_file"),
    ],
)
def test_bad_options_name_the_argument(options: dict[str, Any], message: str) -> None:
    url = "wss://127.0.0.1:1/" if "tls" in options else "ws://127.0.0.1:1/"
    with pytest.raises(wsroute.ConfigError) as caught:
        wsroute.connect(url, **options)
    assert message in str(caught.value)


def test_on_close_in_the_config_file_is_checked_with_its_key_path() -> None:
    text = _daemon_config("ws://127.0.0.1:1/").replace(
        "on_close = [", 'on_close = [{ text = "a", raw = "00" }, '
    )
    with pytest.raises(wsroute.ConfigError) as caught:
        loads(text, path="test.toml")
    assert "connections.up.on_close[0]: a closing frame is exactly one of" in str(caught.value)


def test_a_bad_url_names_the_argument() -> None:
    with pytest.raises(wsroute.ConfigError, match="url: must start with ws:// or wss://"):
        wsroute.connect("http://127.0.0.1/")


async def test_ready_timeout_says_why() -> None:
    async with ScriptedUpstream().serve() as url:
        pass  # the port is free again: nothing answers
    client = wsroute.connect(url, ready_timeout=0.3, reconnect={"initial": 0.05, "max": 0.1})
    with pytest.raises(TimeoutError, match=r"not connected within 0\.3s .*connect_failed"):
        async with client:
            pass


# -- on_close ----------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_on_close_frames_come_before_the_close_frame_on_close(transport: str) -> None:
    server = Recording()
    async with server.serve() as url:
        async with wsroute.connect(
            url,
            transport=transport,
            compression="none",
            on_connect=[LOGIN],
            on_close=[{"struct": ("<ib", [0, 0])}, {"text": "bye"}],
            ready_timeout=10,
        ) as conn:
            await conn.send(json={"n": 1})
        await wait_until(server.ended)
    assert server.sessions == [
        ['{"role":"admin","user_id":"lib"}', '{"n":1}', RELEASE, "bye", ("close", 1000)]
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_on_close_is_not_attempted_once_the_peer_is_gone(transport: str) -> None:
    server = Recording(hang_up=1)  # closes each connection after the login
    async with server.serve() as url:
        async with wsroute.connect(
            url,
            transport=transport,
            compression="none",
            on_connect=[LOGIN],
            on_close=[{"raw": RELEASE}],
            reconnect={"initial": 30, "max": 30},  # no second connection in this test
            ready_timeout=10,
        ) as conn:
            await wait_until(lambda: conn.state is wsroute.ConnectionState.WAITING)
        await wait_until(server.ended)
    # Only the client's answer to the server's close frame (its code echoed): no release.
    assert server.sessions == [['{"role":"admin","user_id":"lib"}', ("close", 1001)]]


async def test_on_close_is_bounded_by_close_timeout_with_a_peer_that_reads_nothing() -> None:
    upstream = ScriptedUpstream()
    async with upstream.serve() as url:
        client = wsroute.connect(
            url,
            on_close=[{"raw": b"\x00" * 65_536}] * 200,  # far more than the socket buffers take
            compression="none",
            close_timeout=0.2,
            ping_interval=0,
            ready_timeout=10,
        )
        with capture_logs() as logs:
            async with client:
                upstream.stall()
        # Returned: the stop did not wait for the peer (2 x close_timeout at most).
        assert client.state is wsroute.ConnectionState.STOPPED
    (incomplete,) = [entry for entry in logs if entry["event"] == "on_close_incomplete"]
    assert incomplete["timed_out"] is True
    assert incomplete["sent"] < incomplete["frames"] == 200


def _daemon_config(url: str) -> str:
    return f"""
[connections.up]
url = "{url}"
on_connect = [{{ json = {{ role = "admin", user_id = "d" }} }}]
on_close = [{{ struct = {{ format = "<ib", values = [0, 0] }} }}, {{ text = "bye" }}]

[routes.all]
handlers = ["seen"]

[handlers.seen]
plugin = "collectors:Collect"
"""


async def test_on_close_frames_are_sent_when_the_daemon_stops() -> None:
    server = Recording()
    async with server.serve() as url:
        async with running(_daemon_config(url)) as service:
            await wait_until(
                lambda: service.connections["up"].state is wsroute.ConnectionState.CONNECTED
            )
        await wait_until(server.ended)
    assert server.sessions == [['{"role":"admin","user_id":"d"}', RELEASE, "bye", ("close", 1000)]]


async def test_on_close_frames_are_sent_when_a_reload_restarts_the_connection(
    tmp_path: Path,
) -> None:
    server = Recording()
    path = tmp_path / "wsroute.toml"
    async with server.serve() as url:
        path.write_text(_daemon_config(url))
        service = Service(plan(load(path)), reload=lambda: plan(load(path)))
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            try:
                await wait_until(
                    lambda: service.connections["up"].state is wsroute.ConnectionState.CONNECTED
                )
                path.write_text(
                    _daemon_config(url).replace(
                        "[connections.up]\n", '[connections.up]\nping_interval = "5s"\n'
                    )
                )
                assert await service.reload()
                await wait_until(server.ended)
                await wait_until(lambda: len(server.sessions) == 2)
            finally:
                service.shutdown()
        await wait_until(lambda: server.ended(1))
    login = '{"role":"admin","user_id":"d"}'
    assert server.sessions == [
        [login, RELEASE, "bye", ("close", 1000)],  # restarted by the reload
        [login, RELEASE, "bye", ("close", 1000)],  # stopped with the daemon
    ]


async def test_the_demo_pings_and_releases_when_the_daemon_stops(tmp_path: Path) -> None:
    upstream = ReferenceUpstream(tick_interval=0.05)
    async with upstream.serve() as url:
        environ = {"WSROUTE_DEMO_URL": url, "WSROUTE_DEMO_DIR": str(tmp_path)}
        with capture_logs() as logs:
            async with running(demo_config_text(), environ) as service:
                # The heartbeat is a ping the upstream answers, not a release.
                await wait_until(lambda: upstream.pings >= 1, timeout=10)
                await wait_until(lambda: service.runners["printer"].stats.handled >= 3)
                assert all(opcode != 0 for opcode, _ in upstream.commands)
            await wait_until(lambda: (0, None) in upstream.commands)
    assert upstream.commands == [(2, ["first", "test"]), (0, None)]
    assert service.dispatcher.unmatched["demo"] == 0  # the pongs are routed
    events = [entry["event"] for entry in logs]
    assert events.index("on_close_sent") < events.index("demo_upstream_release_received")


# -- the sync face -------------------------------------------------------------

SYNC_SCRIPT = """
import logging
import sys

import structlog

import wsroute.sync

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
with wsroute.sync.connect(
    sys.argv[1],
    codec="struct",
    codec_options={"header": "<i", "fields": ["opcode"], "key": "opcode",
                   "text": "json", "text_key": "type"},
    on_connect=[{"json": {"role": "admin", "user_id": "script"}}],
    on_close=[{"struct": ("<ib", [0, 0])}],
    ready_timeout=10,
) as conn:
    conn.send(struct=("<i", [2]), json=["first", "test"])
    for message in conn:
        print(message.key, flush=True)
        if message.key == 1:
            break
    assert conn.receive(timeout=10) is not None
print("closed", conn.state.value, flush=True)
"""


async def test_the_sync_face_works_from_a_plain_script(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SYNC_SCRIPT)
    upstream = ReferenceUpstream(tick_interval=0.02)
    async with upstream.serve() as url:
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [sys.executable, str(script), url], check=False, env=_quiet_env()
            )
        await wait_until(lambda: (0, None) in upstream.commands)
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().split()
    assert lines[:3] == ["welcome", "2", "1"]
    assert lines[-2:] == ["closed", "stopped"]
    assert upstream.logins == [{"role": "admin", "user_id": "script"}]
    assert upstream.commands[0] == (2, ["first", "test"])
    assert upstream.commands[-1] == (0, None)


def test_the_sync_face_checks_options_before_any_thread() -> None:
    with pytest.raises(wsroute.ConfigError, match="ping_timeout"):
        wsroute.sync.connect("ws://127.0.0.1:1/", ping_timeout="soon")


# -- the example ---------------------------------------------------------------


async def test_the_example_client_runs_the_classic_flow() -> None:
    upstream = ReferenceUpstream(tick_interval=0.02)
    async with upstream.serve() as url:
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [sys.executable, str(REPO / "examples" / "client.py"), url, "--messages", "8"],
                check=False,
                env=_quiet_env(),
            )
        await wait_until(lambda: (0, None) in upstream.commands)
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode().splitlines()
    assert out[0] == "welcome: {'type': 'welcome', 'user_id': 'example'}"
    assert out[1] == "subscribed to ['first', 'test']"
    assert out[2].startswith("tick first #1: ")
    assert out[-1] == "released and closed after 8 messages"
    assert upstream.logins == [{"role": "admin", "user_id": "example"}]
    assert upstream.commands == [(2, ["first", "test"]), (0, None)]


def _quiet_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "LISTEN_"))}
