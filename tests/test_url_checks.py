"""Every URL of a connection or a sink is checked when the config is loaded: ``check`` = ``run``.

Ports 0, 65536, 99999, -1 and ``abc``, an empty host and a scheme of another
kind are refused with the URL's key path, by the loader (every place), by
``wsroute check`` and ``wsroute run`` (exit 78, the same lines, never a
credential), and by a reload, which leaves the running daemon as it was:
running and delivering.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsroute.config import loads
from wsroute.exceptions import ConfigError
from wsroute.service import plan

from systemd_helpers import (
    WSROUTE,
    NotifyListener,
    daemon,
    daemon_environ,
    jsonl_lines,
    notify_listener,
    reference_config,
    upstream,
    wait_for,
)

SECRET = "s3cretPW77"

#: Where a URL goes: its key path, its table, its schemes (the first is used).
PLACES = {
    "connections.up.url": ("[connections.up]\n", ("ws", "wss")),
    "handlers.hook.url": ('[handlers.hook]\nplugin = "webhook"\n', ("http", "https")),
    "handlers.bus.url": ('[handlers.bus]\nplugin = "nats"\nsubject = "s"\n', ("nats", "tls")),
    "handlers.cache.url": ('[handlers.cache]\nplugin = "redis"\nstream = "s"\n', ("redis",)),
    "handlers.fwd.url": ('[handlers.fwd]\nplugin = "websocket"\n', ("ws", "wss")),
}

#: What is wrong, and the URL that says it (``{s}``: the place's scheme).
BAD = {
    "port 0": "{s}://user:{p}@127.0.0.1:0/",
    "port 65536": "{s}://user:{p}@127.0.0.1:65536/",
    "port 99999": "{s}://user:{p}@127.0.0.1:99999/",
    "port -1": "{s}://user:{p}@127.0.0.1:-1/",
    "port abc": "{s}://user:{p}@127.0.0.1:abc/",
    "empty host": "{s}://user:{p}@:8080/",
    "another scheme": "{other}://user:{p}@127.0.0.1:8080/",
}


def bad_url(place: str, what: str) -> str:
    schemes = PLACES[place][1]
    other = "ftp" if schemes[0] != "ftp" else "http"
    return BAD[what].format(s=schemes[0], p=SECRET, other=other)


def config_text(urls: dict[str, str]) -> str:
    """A config with one connection and the four sinks, the URLs given by key path."""
    parts = []
    for place, (table, schemes) in PLACES.items():
        url = urls.get(place, f"{schemes[0]}://127.0.0.1:8080/")
        parts.append(f'{table}url = "{url}"\n')
    parts.append('[routes.all]\nhandlers = ["hook", "bus", "cache", "fwd"]\n')
    return "\n".join(parts)


@pytest.mark.parametrize("what", sorted(BAD))
@pytest.mark.parametrize("place", sorted(PLACES))
def test_the_loader_refuses_the_url_at_its_key_path(place: str, what: str) -> None:
    with pytest.raises(ConfigError) as error:
        plan(loads(config_text({place: bad_url(place, what)})))
    issues = error.value.issues
    assert [issue.path for issue in issues] == [place], issues
    message = str(issues[0])
    assert SECRET not in message
    expected = {
        "empty host": "has no host",
        "another scheme": "must be redis://" if "cache" in place else "must start with",
    }.get(what, "port must be a number from 1 to 65535")
    assert expected in message, message


def test_good_urls_of_every_kind_are_accepted() -> None:
    urls = {
        "connections.up.url": "wss://user:pw@[::1]:443/feed?token=x",
        "handlers.hook.url": "https://127.0.0.1:65535/in",
        "handlers.bus.url": "tls://127.0.0.1:1",
        "handlers.cache.url": "redis://:pw@127.0.0.1:6379/0",
        "handlers.fwd.url": "ws://127.0.0.1:/",  # an empty port: the scheme's own
    }
    plan(loads(config_text(urls)))
    plan(loads(config_text({"handlers.cache.url": "unix:///run/redis.sock"})))


def _all_bad(tmp_path: Path) -> tuple[Path, list[str]]:
    urls = {
        "connections.up.url": bad_url("connections.up.url", "port 99999"),
        "handlers.hook.url": bad_url("handlers.hook.url", "port -1"),
        "handlers.bus.url": bad_url("handlers.bus.url", "empty host"),
        "handlers.cache.url": bad_url("handlers.cache.url", "port 0"),
        "handlers.fwd.url": bad_url("handlers.fwd.url", "port abc"),
    }
    path = tmp_path / "bad.toml"
    path.write_text(config_text(urls))
    return path, sorted(urls)


@pytest.mark.slow
def test_check_and_run_refuse_the_same_urls_with_exit_78(tmp_path: Path) -> None:
    path, places = _all_bad(tmp_path)
    outputs = {}
    for command in ("check", "run"):
        done = subprocess.run(
            [WSROUTE, command, "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 78, (command, done.stdout, done.stderr)
        assert SECRET not in done.stdout + done.stderr
        lines = [line for line in done.stderr.splitlines() if line.startswith("wsroute: ")]
        outputs[command] = lines
        for place in places:
            assert any(f": {place}: " in line for line in lines), (command, place, lines)
    assert outputs["check"] == outputs["run"]


# --------------------------------------------------------------------------- reload


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    with notify_listener() as notify:
        yield notify


@pytest.mark.slow
def test_a_reload_into_any_bad_url_keeps_the_daemon_running_and_delivering(
    tmp_path: Path, listener: NotifyListener
) -> None:
    with upstream(tmp_path) as up:
        good = reference_config(up.url, tmp_path)
        config = tmp_path / "wsroute.toml"
        config.write_text(good)
        env = daemon_environ(listener.path, None)
        with daemon(config, tmp_path / "daemon.log", env) as proc:
            listener.wait("READY", "1", timeout=30, sender=proc)
            archive = tmp_path / "archive.jsonl"
            wait_for(lambda: jsonl_lines(archive) >= 5, 20, "ticks archived")
            for place in sorted(PLACES):
                for what in sorted(BAD):
                    url = bad_url(place, what)
                    if place == "connections.up.url":
                        text = good.replace(f'url = "{up.url}"', f'url = "{url}"', 1)
                    else:
                        table = textwrap.dedent(PLACES[place][0])
                        text = f'{good}\n{table}url = "{url}"\n'
                    assert text != good
                    config.write_text(text)
                    mark = len(listener.received)
                    proc.send_signal(1)  # SIGHUP
                    ready = listener.wait("READY", "1", after=mark, timeout=20, sender=proc)
                    status = listener.received[ready].fields.get("STATUS", "")
                    assert status.startswith("reload failed"), (place, what, status)
            assert proc.running()
            # Still delivering with the old config: the ticks keep coming.
            seen = jsonl_lines(archive)
            wait_for(lambda: jsonl_lines(archive) >= seen + 5, 20, "more ticks after the reloads")
            assert up.connections == 1  # the connection was never restarted
            events = proc.events()
            failed = [e for e in events if e.get("event") == "reload_failed"]
            assert len(failed) == len(PLACES) * len(BAD)
            invalid = [str(e.get("error")) for e in events if e.get("event") == "reload_invalid"]
            for place in PLACES:
                assert sum(place in line for line in invalid) == len(BAD), place
            assert SECRET not in proc.log_text()
            began = time.monotonic()
            proc.send_signal(15)  # SIGTERM
            assert proc.wait(30) == 0, proc.log_text()[-3000:]
            assert time.monotonic() - began < 30


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?socket_timeout=soon",
        f"redis://user:{SECRET}@127.0.0.1:6379/0?health_check_interval=often",
    ],
)
def test_a_redis_url_its_client_cannot_parse_is_refused_at_load(url: str) -> None:
    with pytest.raises(ConfigError) as error:
        plan(loads(config_text({"handlers.cache.url": url})))
    [issue] = error.value.issues
    assert issue.path == "handlers.cache.url"
    assert SECRET not in str(issue)


@pytest.mark.parametrize(
    ("place", "value", "expected"),
    [
        ("connections.up", "é€", "must be Latin-1 text without control characters"),
        ("connections.up", "a\x01b", "must be Latin-1 text without control characters"),
        ("handlers.hook", "é", "must be printable ASCII"),
    ],
)
def test_a_header_value_its_client_would_refuse_is_refused_at_load(
    place: str, value: str, expected: str
) -> None:
    # The connection's client refused it when it connected (the daemon crashed);
    # the webhook's at every request.
    text = config_text({}).replace(
        PLACES[f"{place}.url"][0],
        PLACES[f"{place}.url"][0] + f"headers = {{ X-A = {json.dumps(value)} }}\n",
    )
    with pytest.raises(ConfigError) as error:
        plan(loads(text))
    [issue] = error.value.issues
    assert issue.path == f"{place}.headers"
    assert expected in issue.message
    assert value not in str(issue)
