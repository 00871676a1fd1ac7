"""The ``jetstream`` source and the ``nats`` sink's HA dedupe, on a real 3-server cluster.

The cluster (tests/nats_cluster.py) runs three nats-server processes on loopback,
JetStream on, one per module; each test uses its own stream, with 3 replicas.
Ingest daemons and workers are real ``wsroute run`` processes; the upstream is a
WebSocket server in the test. Every wait is bounded; ``ack_wait`` is kept to a
second or two so redeliveries come quickly.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.errors
import pytest
from nats.js import JetStreamContext
from nats_cluster import (
    Cluster,
    create_stream,
    nats_cluster,
    needs_nats,
    stream_leader,
    wait_for_jetstream,
)
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from wsroute import Duration, Message
from wsroute.config import loads
from wsroute.exceptions import ConfigError
from wsroute.plugins.jetstream.consumer import consumer_config, max_deliver
from wsroute.plugins.jetstream.entry import entry_fields, jetstream_message
from wsroute.plugins.jetstream.options import JetStreamOptions
from wsroute.plugins.nats import msg_id, payload_and_headers
from wsroute.plugins.redis.entry import encode_entry
from wsroute.service import plan
from wsroute.testing import ScriptedUpstream, free_port

from conftest import running

pytestmark = pytest.mark.anyio

WSROUTE = str(Path(sys.executable).with_name("wsroute"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- no server: options, ids, the entry format --------------------------------

SOURCE_CONFIG = """
{dead}
[sources.ticks]
type = "jetstream"
stream = "TICKS"
{extra}

[routes.ticks]
connection = "ticks"
handlers = ["out"]

[handlers.out]
plugin = "log"
"""


def check(extra: str, dead: str = "") -> None:
    plan(loads(SOURCE_CONFIG.format(extra=extra, dead=dead), path="t.toml"))


def test_max_deliveries_needs_a_dead_letter_handler() -> None:
    with pytest.raises(ConfigError, match="dead"):
        check("max_deliveries = 3")
    check("max_deliveries = 3", dead='[daemon]\ndead_letter = "out"')


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ('url = "http://x"', "sources.ticks.url"),
        ("replicas = 7", "sources.ticks.replicas"),
        ('ack_wait = "100ms"', "sources.ticks.ack_wait"),
        ("fetch = { batch = 0 }", "sources.ticks.fetch"),
        ('durable = "a.b"', "sources.ticks.durable"),
    ],
)
def test_bad_source_options_name_their_key_path(extra: str, path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check(extra)
    assert path in str(caught.value)


def test_max_deliveries_is_the_sources_and_jetstream_never_stops_redelivering() -> None:
    assert max_deliver(0) == max_deliver(3) == -1
    options = JetStreamOptions(stream="S", max_deliveries=2, ack_wait=Duration(5.0))
    config = consumer_config(options)
    assert (config.durable_name, config.max_deliver, config.ack_wait) == ("wsroute", -1, 5.0)
    assert config.ack_policy == "explicit"


def test_a_frame_published_by_the_sink_decodes_as_the_redis_source_would() -> None:
    msg = Message("up", "tick", {"n": 5}, raw='{"n": 5}', seq=9, received_at=1.25)
    data, headers = payload_and_headers(msg, "frame")
    headers = {**(headers or {}), "Nats-Msg-Id": "x"}
    fields = entry_fields(data, headers, 99.0, "frame")
    assert b"Nats-Msg-Id" not in fields

    def decode(frame: Any) -> Message:
        return Message(
            frame.connection,
            "tick",
            json.loads(frame.data),
            raw=frame.data,
            seq=frame.seq,
            received_at=frame.received_at,
        )

    got = jetstream_message("ticks", 17, fields, decode)
    assert (got.connection, got.body, got.raw, got.seq, got.received_at) == (
        "ticks",
        {"n": 5},
        '{"n": 5}',
        9,
        1.25,
    )
    assert got.fields == {"stream_id": "17", "source_connection": "up"}
    # A record payload, and a producer that sent no received_at: the stored time.
    record, _ = payload_and_headers(msg, "record")
    got = jetstream_message("ticks", 3, entry_fields(record, None, 99.0, "record"), decode)
    assert (got.body, got.seq) == ({"n": 5}, 9)
    bare = entry_fields(b'{"n": 1}', None, 42.5, "frame")
    assert jetstream_message("ticks", 4, bare, decode).received_at == 42.5


SINK_CONFIG = """
[handlers.publish]
plugin = "nats"
subject = "ticks.in"
{extra}
"""


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ('dedupe = "seq"\ndedupe_field = "n"', "jetstream = true"),
        ('jetstream = true\ndedupe = "seq"', "dedupe_field"),
        ('jetstream = true\ndedupe = "hash"\ndedupe_field = "n"', "is for dedupe = .seq"),
    ],
)
def test_sink_dedupe_options_are_checked(extra: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error) as caught:
        plan(loads(SINK_CONFIG.format(extra=extra), path="t.toml"))
    assert "handlers.publish" in str(caught.value)


def test_ha_message_ids_ignore_what_differs_between_the_pair() -> None:
    a = Message("up", "t", {"u": 7}, raw='{"u": 7}', seq=3, received_at=1.0)
    b = Message("up", "t", {"u": 7}, raw='{"u": 7}', seq=40, received_at=2.0)
    assert msg_id(a, "seq", "u") == msg_id(b, "seq", "u") == "up:s:7"
    assert msg_id(a, "hash") == msg_id(b, "hash")
    assert msg_id(a, "hash") != msg_id(a.replace(raw='{"u": 8}'), "hash")
    assert msg_id(a, "none") != msg_id(b, "none")
    with pytest.raises(ValueError, match="dedupe_field"):
        msg_id(a, "seq", "missing")
    assert encode_entry(a)["frame"] == b'{"u": 7}'


async def test_a_source_without_a_server_waits_quietly_and_stops_cleanly() -> None:
    port = free_port()  # nothing listens there
    text = SOURCE_CONFIG.format(
        dead="", extra=f'url = "nats://127.0.0.1:{port}"\nreconnect_wait = "100ms"'
    )
    with capture_logs() as logs:
        with anyio.fail_after(10):
            async with running(text):
                await anyio.sleep(1.0)  # several connect attempts
    errors = [e for e in logs if e["event"] == "nats_error"]
    assert [e["log_level"] for e in errors][:1] == ["warning"]
    assert all(e["log_level"] == "debug" for e in errors[1:])
    totals = [e for e in logs if e["event"] == "source_totals"]
    assert totals
    assert totals[0]["pulled"] == 0
    assert not [e for e in logs if e["event"] in ("source_crashed", "nats_disconnected")]


# -- the cluster --------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with nats_cluster(tmp_path_factory.mktemp("nats")) as started:
        anyio.run(wait_for_jetstream, started)
        yield started


@contextlib.asynccontextmanager
async def jetstream(cluster: Cluster) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(cluster.urls, connect_timeout=2)
    try:
        yield nc.jetstream(timeout=5)
    finally:
        await nc.close()


RECORD_PLUGIN = '''
"""A handler for the jetstream tests, loaded by real `wsroute run` workers."""

import json
import os
import time
from dataclasses import dataclass

import anyio

from wsroute import Duration, HandlerContext, Message


class Record:
    """Append {"id", "n", "at"} per handled message to a file; os._exit(1) on a poison one."""

    @dataclass
    class Options:
        path: str
        delay: Duration = Duration(0.0)
        crash_on_poison: bool = False

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self.fd = os.open(options.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    async def handle(self, message: Message) -> None:
        if self.options.crash_on_poison and message.body.get("poison"):
            os._exit(1)
        if self.options.delay:
            await anyio.sleep(self.options.delay)
        line = {"id": message.fields["stream_id"], "n": message.body["n"], "at": time.time()}
        os.write(self.fd, (json.dumps(line) + "\\n").encode())
'''

WORKER = """
[daemon]
log_format = "json"
shutdown_timeout = "{shutdown}"
dead_letter = "dlq"
plugin_paths = ["{plugins}"]

[sources.ticks]
type = "jetstream"
url = {urls}
stream = "{stream}"
durable = "workers"
ack_wait = "{ack_wait}"
max_in_flight = {max_in_flight}
fetch = {{ batch = {batch}, wait = "200ms" }}
{extra}

[routes.ticks]
connection = "ticks"
handlers = ["record"]

[handlers.record]
plugin = "worker_plugins:Record"
path = "{folder}/{name}.done.jsonl"
timeout = "20s"
{record}

[handlers.dlq]
plugin = "jsonl"
path = "{folder}/dead.jsonl"
"""

INGEST = """
[daemon]
log_format = "json"
shutdown_timeout = "3s"

[connections.up]
url = "ws://127.0.0.1:{port}/"
codec = "json"
ping_interval = 0

[routes.all]
handlers = ["publish"]

[handlers.publish]
plugin = "nats"
url = {urls}
subject = "{subject}"
jetstream = true
payload = "frame"
concurrency = 8
{dedupe}

[daemon.api]
listen = ["unix:{folder}/{name}.sock"]
"""


class Daemon:
    """One ``wsroute run`` process; its config, log and handled file live in ``folder``."""

    def __init__(self, folder: Path, name: str, text: str) -> None:
        self.folder = folder
        self.name = name
        self.config = folder / f"{name}.toml"
        self.config.write_text(text)
        self.log_path = folder / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def worker(
        cls,
        folder: Path,
        name: str,
        cluster: Cluster,
        stream: str,
        urls: list[str] | None = None,
        **given: Any,
    ) -> Daemon:
        plugins = folder / "plugins"
        if not plugins.exists():
            plugins.mkdir(mode=0o700)
            module = plugins / "worker_plugins.py"
            module.write_text(RECORD_PLUGIN)
            module.chmod(0o600)
        values: dict[str, Any] = {
            "shutdown": "2s",
            "ack_wait": "2s",
            "max_in_flight": 5,
            "batch": 5,
            "extra": "",
            "record": "",
            **given,
        }
        text = WORKER.format(
            plugins=plugins,
            urls=json.dumps(urls or cluster.urls),
            stream=stream,
            folder=folder,
            name=name,
            **values,
        )
        return cls(folder, name, text)

    @classmethod
    def ingest(
        cls,
        folder: Path,
        name: str,
        cluster: Cluster,
        port: int,
        subject: str,
        dedupe: str = "",
        urls: list[str] | None = None,
    ) -> Daemon:
        text = INGEST.format(
            port=port,
            urls=json.dumps(urls or cluster.urls),
            subject=subject,
            dedupe=dedupe,
            folder=folder,
            name=name,
        )
        return cls(folder, name, text)

    def start(self) -> Daemon:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [WSROUTE, "run", "-c", str(self.config)], stdout=log, stderr=log
            )
        return self

    def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def signal(self, signum: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.wait()

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def done(self) -> list[dict[str, Any]]:
        path = self.folder / f"{self.name}.done.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
        logged = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in logged if e.get("event") == name]

    def tail(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else ""

    def status(self) -> dict[str, Any]:
        """``wsroute status --json`` of this running daemon (its /status)."""
        out = subprocess.run(
            [WSROUTE, "status", "-c", str(self.config), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        status: dict[str, Any] = json.loads(out.stdout)
        return status


@contextlib.contextmanager
def daemons(*started: Daemon) -> Iterator[tuple[Daemon, ...]]:
    try:
        yield started
    finally:
        for daemon in started:
            daemon.ensure_stopped()


async def poll(predicate: Callable[[], object], timeout: float, what: str, *logs: Daemon) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {d.name}:\n{d.tail()}" for d in logs)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{tails}")
        await anyio.sleep(0.05)


class Broadcast:
    """A WebSocket upstream sending the same numbered frames to every client, at a steady rate."""

    def __init__(self, count: int, interval: float, clients: int) -> None:
        self.count = count
        self.interval = interval
        self.clients_wanted = clients
        self.clients: set[ServerConnection] = set()
        self.sent = 0

    async def _session(self, ws: ServerConnection) -> None:
        self.clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            self.clients.discard(ws)

    async def run(self, port: int, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with serve(self._session, "127.0.0.1", port):
            task_status.started()
            with anyio.fail_after(30):
                while len(self.clients) < self.clients_wanted:
                    await anyio.sleep(0.02)
            for n in range(1, self.count + 1):
                frame = json.dumps({"type": "tick", "n": n})
                for ws in list(self.clients):
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(frame)
                self.sent = n
                await anyio.sleep(self.interval)


def handled(*workers: Daemon) -> set[int]:
    return {row["n"] for worker in workers for row in worker.done()}


async def settled(cluster: Cluster, stream: str) -> bool:
    async with jetstream(cluster) as js:
        info = await js.consumer_info(stream, "workers")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def publish(cluster: Cluster, subject: str, numbers: range, *, poison: int = 0) -> None:
    """Publish frames as the nats sink does (payload = "frame")."""
    async with jetstream(cluster) as js:
        for n in numbers:
            body: dict[str, Any] = {"type": "tick", "n": n}
            if n == poison:
                body["poison"] = True
            msg = Message("up", "tick", body, raw=json.dumps(body), seq=n, received_at=1e9 + n)
            data, headers = payload_and_headers(msg, "frame")
            await js.publish(subject, data, headers=headers)


@needs_nats
@pytest.mark.slow
async def test_a_worker_killed_mid_stream_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    """An ingest daemon and three workers; one worker SIGKILLed: every frame handled."""
    await create_stream(cluster, "KILLW", ["killw.in"])
    count = 300
    port = free_port()
    upstream = Broadcast(count, interval=0.004, clients=1)
    slow = 'delay = "20ms"'
    ws = [Daemon.worker(tmp_path, f"w{n}", cluster, "KILLW", record=slow) for n in (1, 2, 3)]
    ingest = Daemon.ingest(tmp_path, "ingest", cluster, port, "killw.in")
    with daemons(ingest, *ws):
        for worker in ws:
            worker.start()
        async with anyio.create_task_group() as tg:
            await tg.start(upstream.run, port)
            ingest.start()
            victim, *others = ws
            await poll(lambda: len(victim.done()) >= 5, 30, "the victim to handle", *ws, ingest)
            victim.signal(signal.SIGKILL)
            killed_with = upstream.sent
        await poll(lambda: handled(*ws) >= set(range(1, count + 1)), 40, "all", *ws, ingest)
        for _ in range(100):
            if await settled(cluster, "KILLW"):
                break
            await anyio.sleep(0.1)
        assert await settled(cluster, "KILLW")
        for worker in others:
            assert worker.signal(signal.SIGTERM) == 0, worker.tail()
        assert ingest.signal(signal.SIGTERM) == 0, ingest.tail()
    assert victim.proc is not None
    assert victim.proc.returncode == -signal.SIGKILL
    assert killed_with < count  # killed mid-stream
    assert all(handled(w) for w in others)
    redelivered = sum(e["redelivered"] for w in others for e in w.events("source_totals"))
    assert redelivered >= 1  # what the victim held came back to the others


@needs_nats
@pytest.mark.slow
async def test_the_stream_leader_server_killed_mid_stream_loses_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Every daemon is given only the leader's URL: after the kill, each reconnects to a
    server it learnt from the cluster, and the stream and consumer elect new leaders."""
    await create_stream(cluster, "LEADER", ["leader.in"])
    count = 400
    port = free_port()
    upstream = Broadcast(count, interval=0.005, clients=1)
    leader = cluster.server(await stream_leader(cluster, "LEADER"))
    only = [leader.url]
    ws = [Daemon.worker(tmp_path, f"w{n}", cluster, "LEADER", urls=only) for n in (1, 2)]
    ingest = Daemon.ingest(tmp_path, "ingest", cluster, port, "leader.in", urls=only)
    try:
        with daemons(ingest, *ws):
            for worker in ws:
                worker.start()
            async with anyio.create_task_group() as tg:
                await tg.start(upstream.run, port)
                ingest.start()
                await poll(lambda: len(handled(*ws)) >= count // 4, 30, "a quarter", *ws, ingest)
                leader.kill()
                killed_at = upstream.sent
            await poll(lambda: handled(*ws) >= set(range(1, count + 1)), 60, "all", *ws, ingest)
            publish = (await anyio.to_thread.run_sync(ingest.status))["handlers"]["publish"]
            for worker in ws:
                assert worker.signal(signal.SIGTERM) == 0, worker.tail()
            assert ingest.signal(signal.SIGTERM) == 0, ingest.tail()
        async with jetstream(cluster) as js:
            info = await js.stream_info("LEADER")
        assert info.cluster is not None
        assert info.cluster.leader != leader.name
    finally:
        if leader.process is None:
            leader.start()
            await wait_for_jetstream(cluster)
    assert killed_at < count
    assert info.state.messages == count  # the ingest held what it could not publish: once each
    for daemon in (ingest, *ws):
        assert daemon.events("nats_reconnected"), daemon.name
    # The election, as the ingest daemon saw it: one outage, waited out with the defaults.
    assert len(ingest.events("nats_unavailable")) == 1, ingest.tail()
    [recovered] = ingest.events("nats_recovered")
    print(f"JetStream leader election seen by the ingest: {recovered['down_for']} s")
    assert (publish["outages"], publish["outage"]) == (1, 0)
    assert publish["outage_seconds_total"] >= recovered["down_for"] - 0.01
    [totals] = ingest.events("delivery_totals")
    assert (totals["handled"], totals["dead_lettered"], totals["lost"]) == (count, 0, 0)
    assert totals["failures"] == 0


@needs_nats
@pytest.mark.slow
async def test_the_whole_cluster_down_for_5_s_loses_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Every server stopped for 5 s mid-stream, then started again: the ingest holds
    what arrives meanwhile and publishes it once the stream is back; nothing lost,
    nothing dead-lettered, each frame stored once and handled by the worker."""
    await create_stream(cluster, "DOWN", ["down.in"])
    count = 200
    port = free_port()
    upstream = Broadcast(count, interval=0.02, clients=1)
    worker = Daemon.worker(tmp_path, "w1", cluster, "DOWN")
    ingest = Daemon.ingest(tmp_path, "ingest", cluster, port, "down.in")
    try:
        with daemons(ingest, worker):
            worker.start()
            async with anyio.create_task_group() as tg:
                await tg.start(upstream.run, port)
                ingest.start()
                await poll(lambda: len(handled(worker)) >= 20, 30, "20 handled", worker, ingest)
                await anyio.to_thread.run_sync(cluster.stop)
                stopped_at = upstream.sent
                await anyio.sleep(5)
                await anyio.to_thread.run_sync(cluster.start)
                await wait_for_jetstream(cluster)
            await poll(
                lambda: handled(worker) >= set(range(1, count + 1)), 60, "all", worker, ingest
            )
            assert worker.signal(signal.SIGTERM) == 0, worker.tail()
            assert ingest.signal(signal.SIGTERM) == 0, ingest.tail()
        async with jetstream(cluster) as js:
            info = await js.stream_info("DOWN")
    finally:
        for server in cluster.servers:
            if server.process is None:
                server.start()
        await wait_for_jetstream(cluster)
    assert stopped_at < count  # stopped mid-stream
    assert info.state.messages == count  # each once
    [totals] = ingest.events("delivery_totals")
    assert (totals["handled"], totals["dead_lettered"], totals["lost"]) == (count, 0, 0)
    [recovered] = ingest.events("nats_recovered")
    assert recovered["down_for"] >= 5.0
    print(f"whole cluster down 5 s, as the ingest saw it: {recovered['down_for']} s")


REFUSAL = """
[daemon]
dead_letter = "dlq"

[connections.up]
url = "${WSROUTE_UPSTREAM}"
codec = "json"
ping_interval = 0
max_frame_size = "2MiB"

[routes.all]
handlers = ["publish"]

[handlers.publish]
plugin = "nats"
url = ${URLS}
subject = "small.in"
jetstream = true
payload = "frame"

[handlers.dlq]
plugin = "jsonl"
path = "${WSROUTE_TMP}/dead.jsonl"
"""


@needs_nats
async def test_a_message_over_max_msg_size_or_max_payload_is_dead_lettered_alone(
    cluster: Cluster, wsroute_daemon: Any
) -> None:
    """JetStream refuses that message (over the stream's max_msg_size, over the server's
    1 MiB max_payload): a failure, not an outage; the others are stored."""
    await create_stream(cluster, "SMALL", ["small.in"], max_msg_size=1024)
    upstream = ScriptedUpstream()
    config = REFUSAL.replace("${URLS}", json.dumps(cluster.urls))
    async with wsroute_daemon(config, upstream=upstream) as daemon:
        await daemon.wait_until(lambda: upstream.connected == 1)
        await daemon.wait_until(lambda: daemon.handler("publish").connected, 10)
        pads = {3: 4000, 5: 1_100_000}
        for n in range(1, 7):
            pad = "x" * pads.get(n, 10)
            await upstream.send(json.dumps({"type": "tick", "n": n, "pad": pad}))
        await daemon.wait_until(lambda: daemon.stats("publish")["handled"] == 4, 10)
        await daemon.wait_until(lambda: daemon.stats("publish")["dead_lettered"] == 2, 10)
        stats = daemon.stats("publish")
        dead_file = daemon.tmp_path / "dead.jsonl"
    dead = [json.loads(line) for line in dead_file.read_text().splitlines()]
    assert [(d["body"]["n"], d["reason"]) for d in dead] == [
        (3, "handler_error"),
        (5, "handler_error"),
    ]
    assert "message size exceeds maximum" in dead[0]["error"]
    assert "MaxPayloadError" in dead[1]["error"]
    assert stats["outage"] == 0
    assert stats["failures"] == 8  # each: the first attempt and the default 3 retries
    async with jetstream(cluster) as js:
        info = await js.stream_info("SMALL")
    assert info.state.messages == 4


@needs_nats
@pytest.mark.slow
async def test_a_poison_message_is_dead_lettered_after_max_deliveries(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The source creates the stream; the poison crashes the worker twice, then is dead.

    The poison is published alone: a message in flight beside it when the worker
    crashes is delivered again too, and with ``max_deliveries = 2`` a sibling that
    happened to be fetched with it at both crashes would be dead-lettered as well
    (how many are depends on the fetch timing). The others follow the poison's end."""
    worker = Daemon.worker(
        tmp_path,
        "w1",
        cluster,
        "POISON",
        ack_wait="1s",
        extra='subjects = ["poison.in"]\nreplicas = 3\nmax_deliveries = 2',
        record="crash_on_poison = true",
    )
    with daemons(worker):
        worker.start()
        async with jetstream(cluster) as js:
            replicas = 0
            for _ in range(200):
                with contextlib.suppress(nats.errors.Error):
                    await js.consumer_info("POISON", "workers")
                    replicas = (await js.stream_info("POISON")).config.num_replicas or 0
                    break
                await anyio.sleep(0.1)
        assert replicas == 3
        await publish(cluster, "poison.in", range(2, 3), poison=2)
        assert await anyio.to_thread.run_sync(worker.wait) == 1  # delivery 1
        worker.start()
        assert await anyio.to_thread.run_sync(worker.wait) == 1  # delivery 2
        worker.start()
        dead = tmp_path / "dead.jsonl"
        await poll(
            lambda: dead.exists() and dead.read_text().count("\n") == 1, 20, "a dead letter", worker
        )
        await publish(cluster, "poison.in", range(1, 2))
        await publish(cluster, "poison.in", range(3, 5))
        await poll(lambda: handled(worker) == {1, 3, 4}, 20, "the others handled", worker)
        assert dead.read_text().count("\n") == 1
        assert worker.signal(signal.SIGTERM) == 0
    letter = json.loads(dead.read_text())
    assert letter["reason"] == "max_deliveries"
    assert "delivered 3 times" in letter["error"]
    assert letter["fields"]["delivery_count"] == 3
    assert letter["body"] == {"type": "tick", "n": 2, "poison": True}
    assert await settled(cluster, "POISON")


@needs_nats
@pytest.mark.slow
async def test_a_handler_slower_than_ack_wait_keeps_its_message(
    cluster: Cluster, tmp_path: Path
) -> None:
    await create_stream(cluster, "SLOW", ["slow.in"])
    slow = Daemon.worker(tmp_path, "slow", cluster, "SLOW", ack_wait="1s", record='delay = "3s"')
    fast = Daemon.worker(tmp_path, "fast", cluster, "SLOW", ack_wait="1s")
    with daemons(slow, fast):
        slow.start()
        await anyio.sleep(1.0)  # the consumer exists before the message
        await publish(cluster, "slow.in", range(1, 2))
        await poll(lambda: bool(slow.events("source_started")), 10, "the slow worker")
        fast.start()
        await poll(lambda: handled(slow) == {1}, 15, "the slow handler", slow, fast)
        await anyio.sleep(1.5)  # a redelivery would reach the fast worker by now
        assert slow.signal(signal.SIGTERM) == 0
        assert fast.signal(signal.SIGTERM) == 0
    assert handled(fast) == set()
    assert len(slow.done()) == 1
    totals = slow.events("source_totals")[0]
    assert totals["renewals"] >= 2  # 3 s at one every 1/3 s
    assert totals["redelivered"] == 0
    async with jetstream(cluster) as js:
        info = await js.consumer_info("SLOW", "workers")
    assert info.num_redelivered == 0


@needs_nats
@pytest.mark.slow
async def test_sigterm_releases_what_the_worker_still_held(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Released messages are redelivered at once, not after ack_wait (30 s here)."""
    await create_stream(cluster, "TERM", ["term.in"])
    first = Daemon.worker(
        tmp_path,
        "first",
        cluster,
        "TERM",
        ack_wait="30s",
        shutdown="300ms",
        max_in_flight=10,
        batch=10,
        record='delay = "500ms"',
    )
    second = Daemon.worker(tmp_path, "second", cluster, "TERM", ack_wait="30s")
    with daemons(first, second):
        first.start()
        await anyio.sleep(1.0)
        await publish(cluster, "term.in", range(1, 11))
        await poll(lambda: len(first.done()) >= 1, 15, "the first worker", first)
        assert first.signal(signal.SIGTERM) == 0, first.tail()
        stopped_at = time.monotonic()
        second.start()
        await poll(lambda: handled(first, second) == set(range(1, 11)), 15, "all", first, second)
        took = time.monotonic() - stopped_at
        assert second.signal(signal.SIGTERM) == 0
    totals = first.events("source_totals")[0]
    assert totals["released"] >= 5
    assert first.events("messages_released")
    assert handled(second)
    assert took < 25  # not the 30 s ack_wait: they were released
    assert await settled(cluster, "TERM")


@needs_nats
@pytest.mark.slow
@pytest.mark.parametrize(
    "dedupe",
    ['dedupe = "seq"\ndedupe_field = "n"', 'dedupe = "hash"\ndedupe_window = "5m"'],
    ids=["seq", "hash"],
)
async def test_an_ha_ingest_pair_stores_each_frame_once(
    cluster: Cluster, tmp_path: Path, dedupe: str
) -> None:
    mode = dedupe.split('"')[1]
    stream, subject = f"HA{mode.upper()}", f"ha{mode}.in"
    await create_stream(cluster, stream, [subject], duplicate_window=60.0)
    count = 300
    port = free_port()
    upstream = Broadcast(count, interval=0.004, clients=2)
    pair = [Daemon.ingest(tmp_path, f"ingest-{n}", cluster, port, subject, dedupe) for n in "ab"]
    with daemons(*pair):
        async with anyio.create_task_group() as tg:
            await tg.start(upstream.run, port)
            for daemon in pair:
                daemon.start()
            victim, survivor = pair
            await poll(lambda: upstream.sent >= count // 2, 30, "half the frames sent", *pair)
            victim.signal(signal.SIGKILL)
            killed_at = upstream.sent
        async with jetstream(cluster) as js:
            for _ in range(100):
                info = await js.stream_info(stream)
                if info.state.messages >= count:
                    break
                await anyio.sleep(0.1)
            await anyio.sleep(0.3)  # a duplicate would show up now
            info = await js.stream_info(stream)
            state = info.state
            numbers = [
                json.loads((await js.get_msg(stream, seq)).data or b"{}")["n"]
                for seq in range(state.first_seq, state.last_seq + 1)
            ]
        assert survivor.signal(signal.SIGTERM) == 0, survivor.tail()
    assert killed_at < count
    assert sorted(numbers) == list(range(1, count + 1))  # each once
    totals = survivor.events("sink_totals")[0]
    assert totals["stored"] + totals["duplicates"] == count
    assert totals["duplicates"] > 0
    # The sinks raised the stream's 60 s window to their dedupe_window (2 m, 5 m).
    assert info.config.duplicate_window == (120.0 if mode == "seq" else 300.0)
    assert victim.events("duplicate_window_raised") or survivor.events("duplicate_window_raised")
