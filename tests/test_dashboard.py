"""systemd/grafana-dashboard.json asks only for metrics the daemon exports.

Every PromQL expression of the dashboard (panel targets and template
variables) is read, its metric names are taken out, and each must be one that
``/metrics`` serves: ``wsroute.api.metrics.METRIC_NAMES`` (the daemon's own
list) or a standard ``process_*`` metric of prometheus_client's
``ProcessCollector``, and one docs/observability.md documents. The
expressions are also checked for what a typo would break: balanced brackets
and quotes, ``rate``/``increase`` only over counters, label values the daemon
uses, and the dashboard's variables on every selector.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import ProcessCollector

from wsroute.api.metrics import HANDLER_OUTCOMES, METRIC_NAMES

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "systemd" / "grafana-dashboard.json"
OBSERVABILITY = ROOT / "docs" / "observability.md"
METRIC = re.compile(r"\b(?:wsroute|process)_[a-z_]+")
# What the dashboard must show (the operator's questions), by metric.
REQUIRED = {
    "wsroute_connection_up",
    "wsroute_connection_frames_total",
    "wsroute_connection_decode_errors_total",
    "wsroute_connection_reconnects_total",
    "wsroute_handler_messages_total",
    "wsroute_handler_queue_depth",
    "wsroute_handler_queue_capacity",
    "wsroute_handler_in_flight",
    "wsroute_handler_retries_total",
    "wsroute_handler_timeouts_total",
    "wsroute_unmatched_total",
    "wsroute_memory_queued_bytes",
    "wsroute_memory_budget_bytes",
    "wsroute_config_reloads_total",
}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows hold theirs


def _expressions() -> list[tuple[str, str]]:
    """``(where, PromQL)`` for every query in the dashboard."""
    board = _dashboard()
    found = []
    for panel in _panels(board["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]
        found.append(
            (f"variable ${var['name']}", query["query"] if isinstance(query, dict) else query)
        )
    return found


def _exported() -> set[str]:
    """What ``/metrics`` serves: the daemon's list plus the standard process metrics."""
    process = {
        s.name for family in ProcessCollector(registry=None).collect() for s in family.samples
    }
    assert "process_cpu_seconds_total" in process  # Linux: the collector reads /proc
    return set(METRIC_NAMES) | process


def _documented() -> tuple[set[str], list[str]]:
    """The names in docs/observability.md's metric table, and its wildcard prefixes."""
    text = OBSERVABILITY.read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    prefixes: list[str] = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        for name in re.findall(r"`([a-z_]+\*?)`", first_cell):
            if name.endswith("*"):
                prefixes.append(name.rstrip("*"))
            else:
                names.add(name)
    assert len(names) >= 15, names
    assert prefixes == ["process_"], prefixes
    return names, prefixes


def _used() -> set[str]:
    return {name for _, expr in _expressions() for name in METRIC.findall(expr)}


def test_the_daemon_list_is_the_documented_list() -> None:
    names, _ = _documented()
    assert set(METRIC_NAMES) == names


@pytest.mark.parametrize(("where", "expr"), _expressions())
def test_every_metric_is_one_the_daemon_exports(where: str, expr: str) -> None:
    names = METRIC.findall(expr)
    assert names, f"{where}: no wsroute metric in {expr!r}"
    exported = _exported()
    documented, prefixes = _documented()
    for name in names:
        assert name in exported, f"{where}: {name} is not exported by the daemon"
        assert name in documented or name.startswith(tuple(prefixes)), (
            f"{where}: {name} is not in docs/observability.md"
        )


@pytest.mark.parametrize(("where", "expr"), _expressions())
def test_every_expression_is_well_formed(where: str, expr: str) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quoted = False
    for char in expr:
        if char == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif char in "([{":
            stack.append(char)
        elif char in pairs:
            assert stack, f"{where}: unbalanced {char!r} in {expr}"
            assert stack.pop() == pairs[char], f"{where}: unbalanced {char!r} in {expr}"
    assert not quoted, f"{where}: unclosed quote in {expr}"
    assert not stack, f"{where}: unclosed {stack} in {expr}"
    # rate() and increase() are for counters; a gauge there is a silent nonsense graph.
    for function, name in re.findall(r"\b(rate|irate|increase)\(\s*([a-z_]+)", expr):
        assert name.endswith("_total"), f"{where}: {function}() over the gauge {name}"
    for name in METRIC.findall(expr):
        if name.endswith("_total"):
            assert (
                re.search(rf"\b(rate|irate|increase)\(\s*{name}\b", expr) or "label_values(" in expr
            ), f"{where}: the counter {name} is shown raw, not as a rate or increase"
    for outcome in re.findall(r'outcome=~?"([^"]+)"', expr):
        assert set(outcome.split("|")) <= set(HANDLER_OUTCOMES), f"{where}: outcome {outcome}"
    for result in re.findall(r'result=~?"([^"]+)"', expr):
        assert set(result.split("|")) <= {"success", "failure"}, f"{where}: result {result}"


@pytest.mark.parametrize(("where", "expr"), [e for e in _expressions() if e[0].startswith("panel")])
def test_every_panel_query_follows_the_job_and_instance_variables(where: str, expr: str) -> None:
    for match in METRIC.finditer(expr):
        selector = expr[match.end() :]
        assert selector.startswith("{"), f"{where}: {match.group()} without a selector"
        labels = selector[: selector.index("}")]
        assert 'job=~"$job"' in labels, (where, expr)
        assert 'instance=~"$instance"' in labels, (where, expr)


def test_the_dashboard_shows_what_an_operator_asks() -> None:
    missing = REQUIRED - _used()
    assert not missing, f"no panel for {sorted(missing)}"


def test_the_dashboard_is_importable() -> None:
    board = _dashboard()
    assert board["id"] is None  # Grafana assigns its own
    assert board["uid"]
    assert board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    for name in ("job", "instance", "connection", "handler"):
        assert variables[name]["datasource"]["uid"] == "${datasource}", name
