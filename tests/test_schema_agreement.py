"""The JSON Schema and `wsroute check` agree on every single-key change of the example config.

The corpus: each value of config/wsroute.example.toml replaced, one at a time,
by the wrong type, a value out of its bounds, a misspelled enum, a ``${...}``
form, an empty string or array, and each key misspelled; the schema (what an
editor shows) and ``wsroute check`` (the loader and the plugin phase) must
both accept or both refuse each variant. The few variants that break a rule
across keys, which a schema cannot state, are listed with the rule, and the
test fails if one of them stops disagreeing, so the list cannot go stale.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from structlog.testing import capture_logs

from wsroute.config import ConfigError, loads
from wsroute.registry import Registry
from wsroute.service import plan

from conftest import REPO

EXAMPLE = REPO / "config" / "wsroute.example.toml"
SCHEMA = REPO / "config" / "wsroute.schema.json"

# Variants (by name, a regular expression) that break a rule across keys or tables,
# which check applies and a schema cannot state -> the rule.
ACROSS_KEYS = {
    r"(daemon\.(unmatched|dead_letter)|handlers\.\w+\.dead_letter) = ": "names a handler",
    r"routes\.\w+\.connection = ": "names a connection or a source",
    r"connections\.\w+\.codec = ": "names a [codecs.NAME] table or a codec plugin",
    r"^(connections|codecs|handlers)\.\w+ misspelled$": "a name other tables use",
    r"\.struct\.(format|values) = ": "the values must fit the struct format",
    r"^codecs\.exchange\.(header|fields|key) = ": "the header's fields and key fit its format",
    r"\.tls\.key_file = ": "key_file goes with cert_file",
    r"\.reconnect\.(max = |initial = \"1m 30s\")": "max must not be below initial",
}
Path = tuple[str | int, ...]


def _duration(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"([0-9.]+(ms|s|m|h))+", value) is not None


def _size(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9.]+(B|KiB|MiB|GiB)", value) is not None


def _replacements(value: Any) -> list[Any]:
    """Wrong, out-of-bounds and interpolated stand-ins for one value of the example."""
    if isinstance(value, bool):
        return ["yes", 1]
    if isinstance(value, int):
        return [0, -1, float(value), str(value), "${N:-5}"]
    if isinstance(value, float):
        return [0.0, -1.0, 1.5, "many"]
    if _duration(value):
        return [0, "0s", 5, "soon", "1m\t30s", "1m 30s", "${D:-" + value + "}", True]
    if _size(value):
        return [0, "0B", 1.0, 2048.0, "12 apples", "${S:-" + value + "}", -1]
    if isinstance(value, str):
        return [value + "-typo", "", 5, "${V:-" + value + "}"]
    if isinstance(value, list):
        return ["x", []] if value and not isinstance(value[0], dict) else ["x"]
    if isinstance(value, dict):
        return ["x"]
    raise TypeError(value)


def _leaves(node: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key), value
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, dict):
                yield from _leaves(value, (*path, i))


def _show(path: Path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def corpus() -> dict[str, dict[str, Any]]:
    """Name -> the example document with one change."""
    example = tomllib.loads(EXAMPLE.read_text())
    variants: dict[str, dict[str, Any]] = {}
    for path, value in _leaves(example):
        for replacement in _replacements(value):
            document = copy.deepcopy(example)
            _at(document, path[:-1])[path[-1]] = replacement
            variants[f"{_show(path)} = {_toml(replacement)}"] = document
        if isinstance(path[-1], str) and len(path) > 1:
            document = copy.deepcopy(example)
            parent = _at(document, path[:-1])
            parent[path[-1] + "x"] = parent.pop(path[-1])
            variants[f"{_show(path)} misspelled"] = document
    return variants


def _at(document: Any, path: Path) -> Any:
    for part in path:
        document = document[part]
    return document


def _toml(value: Any) -> str:
    """A value as TOML, inline (the corpus writes every table of a section inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def _text(document: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in document.items())


@functools.cache
def _registry() -> Registry:
    return Registry.discover()


def accepted_by_check(document: dict[str, Any]) -> bool:
    try:
        with capture_logs():  # plugin_loaded lines, once per variant
            plan(loads(_text(document), path="variant.toml", environ={}), _registry())
    except ConfigError:
        return False
    return True


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))


def test_the_corpus_is_the_example_changed_one_key_at_a_time() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    assert accepted_by_check(example)  # the writer of the variants loses nothing
    assert tomllib.loads(_text(example)) == example
    assert len(corpus()) >= 168


def test_schema_and_check_agree_on_every_variant(
    validator: jsonschema.Draft202012Validator,
) -> None:
    disagreements = []
    beyond: dict[str, list[str]] = {rule: [] for rule in ACROSS_KEYS}
    for name, document in corpus().items():
        by_schema = validator.is_valid(document)
        by_check = accepted_by_check(document)
        rules = [rule for rule in ACROSS_KEYS if re.search(rule, name)]
        if rules and by_schema and not by_check:
            beyond[rules[0]].append(name)
        elif by_schema != by_check:
            first = next(iter(validator.iter_errors(document)), None)
            disagreements.append(
                f"{name}: schema {'accepts' if by_schema else 'refuses'}"
                f"{'' if first is None else f' ({first.message})'}, "
                f"check {'accepts' if by_check else 'refuses'}"
            )
    assert disagreements == []
    # Each rule beyond a schema is still needed: a variant the schema accepts and check refuses.
    assert [rule for rule, names in beyond.items() if not names] == []
