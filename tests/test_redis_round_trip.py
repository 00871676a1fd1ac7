"""The Redis plugins' hot paths against a real ``redis-server``: :class:`Link`'s round
trips (hiredis' reader over connections wsroute owns; a hostile peer's RESP3 push),
the sink's ``handle_batch`` on one stream without dedupe (no per-frame objects), and
:func:`pack_messages`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import trustme
from redis.exceptions import AuthenticationError, NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from wsroute import DeadLetter, Message, Unavailable
from wsroute.plugins.redis.entry import (
    encode_entry_bytes,
    pack_entry_bytes,
    pack_messages,
    unpack_entry,
)
from wsroute.plugins.redis.outage import is_redis_outage, unavailable
from wsroute.plugins.redis.roundtrip import Link, round_trip
from wsroute.plugins.redis.sink import RedisHandler
from wsroute.testing import build_handler, free_port

from conftest import tcp_server
from redis_helpers import REDIS_SERVER, RedisServer, requires_redis

pytestmark = pytest.mark.anyio


def tick(n: int, **kwargs: Any) -> Message:
    raw = json.dumps({"type": "tick", "n": n}).encode()
    return Message("up", "tick", None, raw=raw, seq=n, received_at=1_700_000_000.25 + n, **kwargs)


def test_pack_messages_writes_what_pack_entry_bytes_writes() -> None:
    odd = [
        Message("up", [1, "x"], None, raw="text ü", seq=2, received_at=3.5),  # text
        Message("", None, {"a": 1}, raw=None, seq=0, received_at=0.0),  # no raw frame
        Message("up", 7, None, raw=b"\x00\x01", seq=2**40, received_at=1e-7),  # tiny time
        Message("up", 7, None, raw=b"x", seq=1, received_at=1e16),  # huge time
        tick(9, dead_letter=DeadLetter(reason="r", handler="h", error="e", attempts=2)),
    ]
    messages = [tick(1), *odd, tick(2)]
    assert pack_messages(messages) == pack_entry_bytes([encode_entry_bytes(m) for m in messages])
    frames = unpack_entry({k.encode(): v for k, v in pack_messages(messages).items()})
    assert [f[b"seq"] for f in frames] == [b"1", b"2", b"0", b"1099511627776", b"1", b"9", b"2"]
    assert float(frames[0][b"received_at"]) == 1_700_000_001.25
    assert frames[3][b"received_at"] == repr(1e-7).encode()


@requires_redis
async def test_round_trip_puts_every_reply_in_its_place(server: RedisServer) -> None:
    link = Link(server.url, timeout=5.0)
    try:
        await link.round_trip([("SET", "str", "x")])
        # Enough commands that the replies arrive over several socket reads.
        commands: list[Any] = []
        for n in range(200):
            commands += [("XADD", "s", "*", "n", n), ("XADD", "str", "*", "a", "b"), ("PING",)]
        replies = await round_trip(link, commands)
        assert len(replies) == 600
        assert all(isinstance(r, bytes) and b"-" in r for r in replies[0::3])
        assert all(isinstance(r, ResponseError) for r in replies[1::3])
        assert all(str(r).startswith("WRONGTYPE") for r in replies[1::3])
        assert replies[2::3] == [b"PONG"] * 200
        # The connection is in step afterwards: the next round trip gets its own replies,
        # and an error reply redis-py has a class for comes back as that class.
        echo = await round_trip(link, [("ECHO", "a"), ("EVALSHA", "0" * 40, 0), ("ECHO", "b")])
        assert echo[0::2] == [b"a", b"b"]
        assert isinstance(echo[1], NoScriptError)
    finally:
        await link.aclose()
    check = aioredis.Redis.from_url(server.url)
    try:
        assert await check.xlen("s") == 200
    finally:
        await check.aclose()


@requires_redis
async def test_round_trip_uses_the_urls_database(server: RedisServer) -> None:
    base = server.url.rsplit("/", 1)[0]
    link = Link(f"{base}/3", timeout=5.0)
    check = aioredis.Redis.from_url(f"{base}/3")
    try:
        assert await link.round_trip([("SET", "in3", "v")]) == [b"OK"]
        assert await check.get("in3") == b"v"
    finally:
        await link.aclose()
        await check.aclose()


@requires_redis
@pytest.mark.parametrize("command", ["HELLO", "subscribe", "MONITOR"])
async def test_commands_that_make_redis_push_are_refused_unsent(
    server: RedisServer, command: str
) -> None:
    link = Link(server.url, timeout=5.0)
    try:
        with pytest.raises(ValueError, match="not sent"):
            await link.round_trip([("PING",), (command, "3")])
        # Nothing was sent (PING neither): the connection still speaks RESP2, in step.
        assert await link.round_trip([("ECHO", "x"), ("INCR", "n")]) == [b"x", 1]
    finally:
        await link.aclose()


async def test_a_push_where_a_reply_is_due_is_never_taken_for_the_reply() -> None:
    # A hostile peer: AUTH and SELECT as the URL asks, then a RESP3 push before PONG.
    seen: list[bytes] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await reader.readuntil(b"SELECT\r\n$1\r\n2\r\n"))
            writer.write(b"+OK\r\n+OK\r\n")
            seen.append(await reader.readuntil(b"PING\r\n"))
            writer.write(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n+PONG\r\n")
            await writer.drain()
            await reader.read()  # until the link closes its end
        finally:
            writer.close()

    async with tcp_server(peer) as port:
        link = Link(f"redis://user:s%40cret@127.0.0.1:{port}/2", timeout=5.0)
        try:
            with pytest.raises(RedisConnectionError, match="push"):
                await link.round_trip([("PING",)])
        finally:
            await link.aclose()
    assert b"AUTH\r\n$4\r\nuser\r\n$6\r\ns@cret\r\n" in seen[0]


@contextlib.contextmanager
def _redis_with(folder: Path, *options: str) -> Iterator[None]:
    """A redis-server with ``options`` (no TCP port of its own unless they give one)."""
    assert REDIS_SERVER is not None
    log = folder / "redis.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--save", "", "--dir", str(folder), *options],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 10
            while b"ready to accept connections" not in log.read_bytes().lower():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@requires_redis
async def test_a_link_over_tls_checks_the_certificate_and_sends_auth_and_select(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    port = free_port()
    tls = ("--tls-port", str(port), "--tls-auth-clients", "no")
    files = ("--tls-cert-file", "cert.pem", "--tls-key-file", "key.pem", "--tls-ca-cert-file")
    with _redis_with(tmp_path, *tls, *files, "ca.pem", "--requirepass", "s3cret"):
        url = f"rediss://:s3cret@localhost:{port}/2"
        link = Link(f"{url}?ssl_ca_certs={tmp_path / 'ca.pem'}", timeout=5.0)
        try:
            assert await link.round_trip([("SET", "k", "v")]) == [b"OK"]
            (info,) = await link.round_trip([("CLIENT", "INFO")])
            assert b" db=2 " in info
        finally:
            await link.aclose()
        # The system's CAs do not know the test CA: the certificate is refused.
        untrusting = Link(url, timeout=5.0)
        try:
            with pytest.raises(RedisConnectionError, match=r"(?i)certificate"):
                await untrusting.round_trip([("PING",)])
        finally:
            await untrusting.aclose()
        wrong = Link(f"rediss://:nope@localhost:{port}/2?ssl_cert_reqs=none", timeout=5.0)
        try:
            with pytest.raises(AuthenticationError):
                await wrong.round_trip([("PING",)])
        finally:
            await wrong.aclose()


@requires_redis
async def test_a_link_over_a_unix_socket_uses_the_urls_database(tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    with _redis_with(tmp_path, "--unixsocket", str(path)):
        link = Link(f"unix://{path}?db=3", timeout=5.0)
        try:
            assert await link.round_trip([("SET", "k", "v")]) == [b"OK"]
            (info,) = await link.round_trip([("CLIENT", "INFO")])
            assert b" db=3 " in info
        finally:
            await link.aclose()


async def _sink(options: dict[str, Any]) -> RedisHandler:
    handler = build_handler("redis", options)
    assert isinstance(handler, RedisHandler)
    await handler.start()
    return handler


@requires_redis
@pytest.mark.parametrize("pack", [1, 16])
async def test_handle_batch_on_one_stream_stores_every_frame_in_order(
    server: RedisServer, client: aioredis.Redis, pack: int
) -> None:
    handler = await _sink({"url": server.url, "stream": "s", "pack": pack})
    try:
        assert await handler.handle_batch([tick(n) for n in range(1, 41)]) is None
        assert await handler.handle_batch([tick(41)]) is None
    finally:
        await handler.stop()
    entries = await client.xrange("s")
    frames = [
        frame
        for _, fields in entries
        for frame in (unpack_entry(fields) if fields.get(b"kind") == b"pack" else [fields])
    ]
    assert [json.loads(f[b"frame"])["n"] for f in frames] == list(range(1, 42))
    assert {f[b"received_at"] for f in frames[:1]} == {b"1700000001.25"}
    expected_entries = 41 if pack == 1 else 3 + 1  # 16 + 16 + 8, then 1 on its own
    assert len(entries) == expected_entries
    stats = handler.stats
    assert (stats.entries, stats.frames, handler.round_trips) == (expected_entries, 41, 2)


@requires_redis
@pytest.mark.parametrize("pack", [1, 16])
async def test_handle_batch_reports_each_frame_of_a_refused_entry(
    server: RedisServer, client: aioredis.Redis, pack: int
) -> None:
    await client.set("s", "not a stream")  # every XADD is refused: WRONGTYPE
    handler = await _sink({"url": server.url, "stream": "s", "pack": pack})
    try:
        failures = await handler.handle_batch([tick(n) for n in range(1, 21)])
        assert failures is not None
        assert sorted(failures) == list(range(20))
        assert all(isinstance(e, ResponseError) for e in failures.values())
        assert (handler.stats.entries, handler.stats.frames) == (0, 0)
        await client.delete("s")
        assert await handler.handle_batch([tick(21), tick(22)]) is None
    finally:
        await handler.stop()
    assert (handler.stats.entries, handler.stats.frames) == (2 if pack == 1 else 1, 2)


@requires_redis
async def test_a_replicas_readonly_reply_is_an_outage_and_wrongtype_a_refusal(
    server: RedisServer,
) -> None:
    # A failover turns the server into a read-only replica for a while: "not now";
    # a command against the wrong type of key is "not this": that message's failure.
    admin = aioredis.Redis.from_url(server.url)
    link = Link(server.url, timeout=5.0)
    try:
        await admin.set("str", "x")
        await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        (readonly,) = await round_trip(link, [("XADD", "s", "*", "n", 1)])
        await admin.execute_command("REPLICAOF", "NO", "ONE")
        (wrongtype,) = await round_trip(link, [("XADD", "str", "*", "a", "b")])
    finally:
        await link.aclose()
        await admin.aclose()
    assert isinstance(readonly, ReadOnlyError)
    assert is_redis_outage(readonly)
    assert isinstance(unavailable(readonly), Unavailable)
    assert isinstance(wrongtype, ResponseError)
    assert str(wrongtype).startswith("WRONGTYPE")
    assert not is_redis_outage(wrongtype)
    assert unavailable(wrongtype) is wrongtype
