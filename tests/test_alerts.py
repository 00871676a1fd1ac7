"""systemd/wsroute-alerts.yml: valid rules, each tested, on metrics the daemon exports.

``promtool check rules`` and ``promtool test rules`` run on the shipped files
(Debian's ``prometheus`` package brings promtool; ``.ci/run`` installs it, and
in CI a missing promtool is a failure, not a skip). The test file must give
every alert a case where it fires and one where it does not. Every metric an
expression names is one ``/metrics`` serves (``METRIC_NAMES``, which
tests/test_api.py holds against a real scrape) or Prometheus' own ``up``, and
every label value it filters on is one the daemon uses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from wsroute.api.metrics import HANDLER_OUTCOMES, METRIC_NAMES

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
RULES = SYSTEMD / "wsroute-alerts.yml"
RULE_TESTS = SYSTEMD / "wsroute-alerts.test.yml"
METRIC = re.compile(r"\b(?:wsroute_[a-z_]+|up)\b(?=\s*[{\[ )=<>/]|$)")
# Label values the daemon's metrics take, per label.
LABEL_VALUES = {"outcome": set(HANDLER_OUTCOMES), "result": {"success", "failure"}}


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI: .ci/services-setup installs Debian's prometheus")
        pytest.skip("promtool not installed (apt-get install --no-install-recommends prometheus)")
    return found


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = subprocess.run(
        [_promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SYSTEMD,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, set[bool]] = {}
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            cases.setdefault(check["alertname"], set()).add(bool(check["exp_alerts"]))
    for rule in _rules():
        assert cases.get(rule["alert"]) == {True, False}, rule["alert"]


def test_alerts_use_only_exported_metrics_and_label_values() -> None:
    exported = {*METRIC_NAMES, "up"}
    for rule in _rules():
        expr = rule["expr"]
        used = set(METRIC.findall(expr))
        assert used, f"{rule['alert']}: no metric found in {expr!r}"
        assert used <= exported, f"{rule['alert']}: {sorted(used - exported)} not exported"
        for label, value in re.findall(r'(\w+)="([^"]*)"', expr):
            if label in LABEL_VALUES:
                assert value in LABEL_VALUES[label], f"{rule['alert']}: {label}={value!r}"


def test_every_alert_has_a_severity_a_summary_and_a_runbook_line() -> None:
    for rule in _rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        annotations = rule["annotations"]
        for key in ("summary", "runbook"):
            assert annotations[key], (rule["alert"], key)
            assert "\n" not in annotations[key], (rule["alert"], key)
