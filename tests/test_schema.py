"""`wsroute schema`: the shipped schema is current, valid, and agrees with `wsroute check`."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from wsroute.cli import describe, main
from wsroute.config import ConfigError, loads
from wsroute.config.json_schema import config_schema
from wsroute.registry import Registry
from wsroute.service import plan

from conftest import REPO

SHIPPED = REPO / "config" / "wsroute.schema.json"
REGENERATE = ".venv/bin/wsroute schema --builtins-only > config/wsroute.schema.json"
EXAMPLES = {
    REPO / "config" / "wsroute.example.toml": {"EXCHANGE_TOKEN": "t"},
    REPO / "config" / "demo.toml": {
        "WSROUTE_DEMO_URL": "ws://127.0.0.1:9/",
        "WSROUTE_DEMO_DIR": "/tmp",
    },
}


def builtins() -> dict[str, Any]:
    return config_schema(i for i in Registry.discover().all() if i.origin == "built-in")


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SHIPPED.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_shipped_schema_is_current() -> None:
    assert json.loads(SHIPPED.read_text()) == builtins(), (
        f"config/wsroute.schema.json is stale: regenerate it with `{REGENERATE}`"
    )


def test_the_cli_prints_the_shipped_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--builtins-only"]) == 0
    assert capsys.readouterr().out == SHIPPED.read_text()


@pytest.mark.parametrize("path", list(EXAMPLES), ids=lambda p: p.name)
def test_example_configs_start_with_the_schema_line_and_validate(
    path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("#:schema ")
    # The directive resolves from the file's own folder (and from the demo's real location).
    for folder in {path.parent, path.resolve().parent}:
        assert (folder / first.removeprefix("#:schema ")).resolve() == SHIPPED
    document = tomllib.loads(path.read_text())
    assert [e.message for e in validator.iter_errors(document)] == []
    config = loads(path.read_text(), path=str(path), environ=dict(os.environ, **EXAMPLES[path]))
    plan(config)  # and `wsroute check` accepts it


GOOD = [
    """
    [connections.up]
    url = "ws://127.0.0.1:9/"
    ping_interval = "${PING:-20s}"
    max_frame_size = 65536
    idle_timeout = 0
    reconnect = { initial = "250ms", max = "1m30s" }
    [[connections.up.on_connect]]
    raw = "02 00 00 00"
    [routes.r]
    key = [1, "a", true]
    handlers = ["h"]
    [handlers.h]
    plugin = "jsonl"
    path = "/tmp/x.jsonl"
    queue_bytes = "1MiB"
    overflow = "drop-oldest"
    """,
    """
    [connections.up]
    url = "ws://127.0.0.1:9/"
    codec = "c"
    [codecs.c]
    type = "struct"
    header = "<ib"
    fields = ["op", "flag"]
    [handlers.p]
    plugin = "reply"
    struct = { format = "<i", values = [11] }
    [handlers.w]
    plugin = "webhook"
    url = "https://example.com/hook"
    headers = { Authorization = "Bearer ${TOKEN}" }
    [routes.r]
    handlers = ["p", "w"]
    """,
]

BROKEN = {
    "unknown top-level key": "[deamon]\nlog_level = 'info'\n",
    "bad enum": "[daemon]\nlog_level = 'loud'\n",
    "bad duration": "[daemon]\nshutdown_timeout = 'soon'\n",
    "bad size": "[daemon]\nmemory_budget = '12 apples'\n",
    "negative size": "[daemon]\nmemory_budget = -1\n",
    "unknown connection key": "[connections.up]\nurl = 'ws://a/'\nurll = 1\n",
    "missing url": "[connections.up]\ncodec = 'json'\n",
    "bad table name": "[connections.'a b']\nurl = 'ws://a/'\n",
    "missing codec type": "[codecs.c]\nheader = '<i'\n",
    "unknown codec type": "[codecs.c]\ntype = 'nope'\n",
    "unknown codec option": "[codecs.c]\ntype = 'json'\nheader = '<i'\n",
    "codec option type": "[codecs.c]\ntype = 'struct'\nheader = 4\n",
    "missing codec option": "[codecs.c]\ntype = 'struct'\n",
    "unknown handler plugin": "[handlers.h]\nplugin = 'nope'\n",
    "handler option of another plugin": "[handlers.h]\nplugin = 'log'\npath = '/tmp/x'\n",
    "missing handler option": "[handlers.h]\nplugin = 'jsonl'\n",
    "bad delivery key": "[handlers.h]\nplugin = 'log'\nqueue = 'many'\n",
    "bad overflow": "[handlers.h]\nplugin = 'log'\noverflow = 'explode'\n",
    "bad nested option": "[handlers.h]\nplugin = 'exec'\ncommand = ['true']\n"
    "restart = { initial = 'x' }\n",
    "route without handlers": "[routes.r]\nkey = 1\n",
    "route key table": "[routes.r]\nkey = { a = 1 }\nhandlers = []\n",
    "bad hex step": "[connections.up]\nurl = 'ws://a/'\n"
    "[[connections.up.on_connect]]\nraw = 'zz'\n",
    "unknown source type": "[sources.s]\ntype = 'nope'\n",
}


def rejected_by_check(text: str) -> bool:
    try:
        plan(loads(text, path="corpus.toml", environ={"PING": "5s", "TOKEN": "x"}))
    except ConfigError:
        return True
    return False


@pytest.mark.parametrize("text", GOOD)
def test_good_configs_are_accepted_by_both(
    text: str, validator: jsonschema.Draft202012Validator
) -> None:
    text = textwrap.dedent(text)
    assert [e.message for e in validator.iter_errors(tomllib.loads(text))] == []
    assert not rejected_by_check(text)


@pytest.mark.parametrize("text", list(BROKEN.values()), ids=list(BROKEN))
def test_broken_configs_are_rejected_by_both(
    text: str, validator: jsonschema.Draft202012Validator
) -> None:
    assert not validator.is_valid(tomllib.loads(text))
    assert rejected_by_check(text)


def test_a_handler_table_is_checked_against_its_plugins_options(
    validator: jsonschema.Draft202012Validator,
) -> None:
    table = {"handlers": {"h": {"plugin": "jsonl", "path": "/x", "fsync": "yes"}}}
    (error,) = validator.iter_errors(table)
    assert list(error.absolute_path) == ["handlers", "h", "fsync"]
    # A plugin named by module:attr is not known to the schema: only the daemon's keys count.
    table = {"handlers": {"h": {"plugin": "mine.handlers:Thing", "anything": 1, "queue": 5}}}
    assert validator.is_valid(table)
    table["handlers"]["h"]["queue"] = "five"
    assert not validator.is_valid(table)


def test_a_full_schema_has_plugin_paths_plugins_the_builtins_one_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "wsr_schema_probe.py").write_text(
        textwrap.dedent(
            '''
            from dataclasses import dataclass, field

            class Probe:
                """A handler with one option."""

                @dataclass
                class Options:
                    depth: int = field(default=3, metadata={"doc": "How deep.", "minimum": 1})

                def __init__(self, options, ctx):
                    pass

                async def handle(self, message):
                    pass
            '''
        )
    )
    config = tmp_path / "wsroute.toml"
    config.write_text(f'[daemon]\nplugin_paths = ["{folder}"]\n')
    try:
        assert main(["schema", "-c", str(config)]) == 0
        full = json.loads(capsys.readouterr().out)
        assert main(["schema", "-c", str(config), "--builtins-only"]) == 0
        only = json.loads(capsys.readouterr().out)
    finally:
        sys.modules.pop("wsr_schema_probe", None)
    (handler_table,) = full["properties"]["handlers"]["patternProperties"].values()
    arms = handler_table["allOf"]
    probe = [
        a for a in arms if a["if"]["properties"]["plugin"]["const"] == "wsr_schema_probe:Probe"
    ]
    assert probe[0]["then"]["properties"]["depth"] == {
        "type": "integer",
        "minimum": 1,  # its bounds: checked by wsroute check, stated here, listed by plugins
        "description": "How deep.",
        "default": 3,
    }
    assert main(["plugins", "-c", str(config), "--json"]) == 0
    (listed,) = [p for p in json.loads(capsys.readouterr().out) if p["name"].endswith(":Probe")]
    assert listed["options"][0]["type"] == "integer, at least 1"
    assert "wsr_schema_probe" not in json.dumps(only)
    assert only == builtins()


def test_plugins_json_gives_typed_defaults_nested_tables_and_sources() -> None:
    described = {(d["kind"], d["name"]): d for d in describe(Registry.discover().all())}
    exec_options = {o["name"]: o for o in described["handler", "exec"]["options"]}
    assert exec_options["stop_timeout"]["default"] == "5s"  # not "\"5s\""
    assert exec_options["max_line"]["default"] == "1MiB"
    assert exec_options["ack"]["default"] is False
    assert exec_options["max_processes"]["default"] == 4
    assert exec_options["cwd"]["default"] is None
    assert exec_options["env"]["default"] == {}
    restart = {o["name"]: o for o in exec_options["restart"]["fields"]}
    assert restart["initial"]["type"] == "duration"
    assert isinstance(restart["initial"]["default"], str)
    assert ("source", "redis-stream") in described
