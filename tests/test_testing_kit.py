"""wsroute.testing, the plugin author's kit: decoding helpers, Recorder, ScriptedUpstream,
run_daemon and the ``wsroute_daemon`` pytest fixture (registered as a pytest plugin)."""

from __future__ import annotations

import importlib.metadata
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from wsroute import ConfigError, DecodeError
from wsroute.demo import ReferenceUpstream
from wsroute.testing import (
    Recorder,
    RecordingContext,
    ScriptedUpstream,
    build_codec,
    build_handler,
    decode,
    decode_all,
    message,
    run_daemon,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


EXCHANGE = {"type": "struct", "header": "<i", "fields": ["opcode"], "key": "opcode"}


# --------------------------------------------------------------------------- decoding


def test_decode_through_a_codec_table() -> None:
    frame = struct.pack("<i", 2) + b'{"subscribed": ["first"]}'
    msg = decode(EXCHANGE, frame, connection="exchange", seq=4)
    assert (msg.connection, msg.key, msg.fields, msg.seq) == ("exchange", 2, {"opcode": 2}, 4)
    assert msg.body == {"subscribed": ["first"]}
    assert msg.raw == frame


def test_decode_all_numbers_frames_like_a_connection() -> None:
    frames = [struct.pack("<i", 1) + b"[1]", struct.pack("<i", 1) + b"[2]"]
    messages = decode_all(EXCHANGE, frames, connection="exchange")
    assert [(m.seq, m.body) for m in messages] == [(1, [1]), (2, [2])]


def test_decode_errors_and_misuse() -> None:
    with pytest.raises(DecodeError):
        decode(EXCHANGE, b"\x01")
    with pytest.raises(TypeError, match="type"):
        decode({"header": "<i"}, b"")
    with pytest.raises(TypeError, match="options apply only"):
        decode(build_codec("json"), "{}", options={"key": "type"})
    with pytest.raises(ConfigError, match=r"codecs\.struct"):
        decode({"type": "struct", "header": 5}, b"")


# --------------------------------------------------------------------------- Recorder


@pytest.mark.anyio
async def test_recorder_records_after_failing_first() -> None:
    recorder: Recorder = build_handler(Recorder, {"fail_first": 1}, ctx=RecordingContext("seen"))
    with pytest.raises(RuntimeError, match="on purpose"):
        await recorder.handle(message(1))
    await recorder.handle(message(2))
    assert [m.body for m in recorder.messages] == [2]
    assert recorder.attempts == 2


# --------------------------------------------------------------------------- end to end

CONFIG = """
[daemon]
dead_letter = "dlq"

[connections.up]
url = "${WSROUTE_UPSTREAM}"
codec = "json"
ping_interval = 0

[[connections.up.on_connect]]
json = { hello = "${GREETING}" }

[routes.ticks]
key = "tick"
handlers = ["seen"]

[handlers.seen]
plugin = "wsroute.testing:Recorder"
fail_first = 2
retries = 1

[handlers.dlq]
plugin = "jsonl"
path = "${WSROUTE_TMP}/dead.jsonl"
"""


@pytest.mark.anyio
async def test_fixture_runs_upstream_and_daemon(wsroute_daemon: Any, tmp_path: Path) -> None:
    upstream = ScriptedUpstream(frames=['{"type": "tick", "n": 1}', '{"type": "tick", "n": 2}'])
    async with wsroute_daemon(CONFIG, upstream=upstream, environ={"GREETING": "hi"}) as daemon:
        seen = daemon.handler("seen", Recorder)  # typed as a Recorder
        assert seen is daemon.handler("seen")
        with pytest.raises(TypeError, match="handler seen is a Recorder, not a ScriptedUpstream"):
            daemon.handler("seen", ScriptedUpstream)
        # fail_first = 2 with retries = 1: the first tick is dead-lettered, the second kept.
        await daemon.wait_until(lambda: len(seen.messages) == 1)
        await upstream.send('{"type": "tick", "n": 3}')
        await daemon.wait_until(lambda: len(seen.messages) == 2)
        assert daemon.stats("seen")["dead_lettered"] == 1
        assert daemon.tmp_path == tmp_path
    assert upstream.received == ['{"hello":"hi"}']
    assert [m.body["n"] for m in seen.messages] == [2, 3]
    assert (tmp_path / "dead.jsonl").read_text().count("\n") == 1


@pytest.mark.anyio
async def test_scripted_upstream_drop_makes_the_daemon_reconnect(wsroute_daemon: Any) -> None:
    upstream = ScriptedUpstream()
    config = CONFIG.replace("fail_first = 2", "fail_first = 0")
    async with wsroute_daemon(config, upstream=upstream, environ={"GREETING": "x"}) as daemon:
        await daemon.wait_until(lambda: upstream.connected == 1)
        upstream.drop()
        await daemon.wait_until(lambda: upstream.connections == 2 and upstream.connected == 1)
    assert upstream.received == ['{"hello":"x"}', '{"hello":"x"}']  # login replayed


@pytest.mark.anyio
async def test_run_daemon_with_the_reference_upstream() -> None:
    config = """
    [connections.exchange]
    url = "${WSROUTE_UPSTREAM}"
    codec = "exchange"
    ping_interval = 0
    [[connections.exchange.on_connect]]
    json = { role = "admin", user_id = "kit" }
    [[connections.exchange.on_connect]]
    struct = { format = "<i", values = [2] }
    json = ["first"]
    [codecs.exchange]
    type = "struct"
    header = "<i"
    fields = ["opcode"]
    key = "opcode"
    [routes.ticks]
    key = 1
    handlers = ["seen"]
    [handlers.seen]
    plugin = "wsroute.testing:Recorder"
    """
    upstream = ReferenceUpstream(tick_interval=0.01, news_every=0)
    async with run_daemon(textwrap.dedent(config), upstream=upstream) as daemon:
        seen = daemon.handler("seen")
        await daemon.wait_until(lambda: len(seen.messages) >= 3)
        tmp = daemon.tmp_path
        assert tmp.is_dir()
    assert upstream.logins == [{"role": "admin", "user_id": "kit"}]
    assert {m.key for m in seen.messages} == {1}
    assert not tmp.exists()  # a folder made by run_daemon is removed with it


@pytest.mark.anyio
async def test_run_daemon_reports_config_and_plugin_errors() -> None:
    with pytest.raises(ConfigError, match=r"handlers\.x\.plugin"):
        async with run_daemon('[handlers.x]\nplugin = "nope:Nothing"\n'):
            pass
    with pytest.raises(ConfigError, match=r"handlers\.x\.bad"):
        async with run_daemon('[handlers.x]\nplugin = "wsroute.testing:Recorder"\nbad = 1\n'):
            pass


@pytest.mark.anyio
async def test_daemon_shutdown_drains() -> None:
    upstream = ScriptedUpstream(frames=['{"type": "tick"}'])
    config = CONFIG.replace("fail_first = 2", "fail_first = 0")
    with anyio.fail_after(20):
        async with run_daemon(config, upstream=upstream, environ={"GREETING": "x"}) as daemon:
            await daemon.wait_until(lambda: daemon.stats("seen")["handled"] == 1)
            daemon.shutdown()
            await daemon.wait_until(lambda: daemon.service.stopped_cleanly, timeout=10)


# --------------------------------------------------------------------------- the pytest plugin


def test_the_fixture_is_a_registered_pytest_plugin() -> None:
    eps = importlib.metadata.entry_points(group="pytest11")
    assert any(ep.name == "wsroute" and ep.value == "wsroute.testing" for ep in eps)


def test_a_plugin_author_uses_the_fixture_without_imports(tmp_path: Path) -> None:
    # A separate pytest run in a folder of its own: only the installed plugin
    # can provide `wsroute_daemon` there.
    (tmp_path / "test_author.py").write_text(
        textwrap.dedent('''
        import pytest
        from wsroute.testing import ScriptedUpstream

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        CONFIG = """
        [connections.up]
        url = "${WSROUTE_UPSTREAM}"
        ping_interval = 0
        [routes.all]
        handlers = ["seen"]
        [handlers.seen]
        plugin = "wsroute.testing:Recorder"
        """

        @pytest.mark.anyio
        async def test_it(wsroute_daemon):
            upstream = ScriptedUpstream(frames=['{"type": "x"}'])
            async with wsroute_daemon(CONFIG, upstream=upstream) as daemon:
                seen = daemon.handler("seen")
                await daemon.wait_until(lambda: seen.messages)
            assert seen.messages[0].key == "x"
        ''')
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
