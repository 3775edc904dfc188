"""The chart's alert rules, checked and unit-tested by promtool on synthetic series.

The PrometheusRule is rendered with `helm template` (release "ringkv", namespace
"kv-test", default thresholds), its groups written out as a rules file, then
`promtool check rules` validates it (PromQL, templates) and `promtool test rules` runs the
cases in alerts_test.yaml: for every alert, series on which it fires, with its labels,
summary and description, and series on which it must not.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import require_tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ringkv"
CASES = Path(__file__).with_name("alerts_test.yaml")
HELM = ROOT / ".tools" / "bin" / "helm"


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool", "Debian package `prometheus` (make tools installs it as root)")


def rule_groups(*values: str, release: str = "ringkv", namespace: str = "kv-test",
                backups: bool = True) -> list[Any]:
    """The rendered groups; with `backups`, backup.enabled too, so every alert is there."""
    if not HELM.exists():
        pytest.skip("helm not found: `make tools` fetches it into .tools/bin")
    out = subprocess.run(
        [str(HELM), "template", release, str(CHART), "--namespace", namespace,
         "--set", "metrics.prometheusRule.enabled=true",
         "--set", f"backup.enabled={str(backups).lower()}", *values,
         "--show-only", "templates/prometheusrule.yaml"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    return yaml.safe_load(out)["spec"]["groups"]


def alerts(groups: list[Any]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def promtool_test(promtool: str, directory: Path, groups: list[Any]) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` with the cases beside the rendered groups. Runbooks are left
    out: promtool compares every annotation, and a runbook is prose (checked below)."""
    for rule in alerts(groups):
        rule["annotations"].pop("runbook")
    (directory / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(CASES, directory / CASES.name)
    return subprocess.run([promtool, "test", "rules", CASES.name], cwd=directory,
                          capture_output=True, text=True, timeout=60, check=False)


def test_rendered_rules_pass_promtool_check(promtool: str, tmp_path: Path) -> None:
    groups = rule_groups()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    proc = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts(groups))} rules found" in proc.stdout


def test_every_alert_fires_on_its_series_and_only_then(promtool: str, tmp_path: Path) -> None:
    proc = promtool_test(promtool, tmp_path, rule_groups())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize("values", [
    ("--set", "metrics.prometheusRule.hintsPending=1000000"),
    ("--set", "metrics.prometheusRule.p99Seconds=2"),
    ("--set-json", "metrics.prometheusRule.quorumUnavailableRatio=0.1"),
    ("--set", "metrics.prometheusRule.rebalanceStalledMinutes=30"),
    ("--set", "metrics.prometheusRule.operatorStaleMinutes=15"),
    ("--set", "metrics.prometheusRule.backupMaxAgeHours=48"),
], ids=lambda v: v[-1].split(".")[-1])
def test_the_cases_notice_a_changed_threshold(promtool: str, tmp_path: Path,
                                              values: tuple[str, ...]) -> None:
    """Guards the test above: with a threshold the cases were not written for, an alert
    that should fire does not, and promtool must say so."""
    proc = promtool_test(promtool, tmp_path, rule_groups(*values))
    assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr


def test_every_alert_has_a_runbook_and_both_kinds_of_case() -> None:
    cases = yaml.safe_load(CASES.read_text())["tests"]
    checked = [(check["alertname"], bool(check["exp_alerts"]))
               for case in cases for check in case["alert_rule_test"]]
    for rule in alerts(rule_groups()):
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), name
        assert len(rule["annotations"]["runbook"].splitlines()) >= 3, name
        assert (name, True) in checked and (name, False) in checked, f"{name}: a case each way"


def test_rules_select_the_release_they_belong_to() -> None:
    for rule in alerts(rule_groups(release="shop", namespace="prod")):
        assert 'namespace="prod"' in rule["expr"], rule["alert"]
        assert 'pod=~"shop-ringkv-' in rule["expr"], rule["alert"]


def test_the_backup_alert_comes_with_scheduled_backups() -> None:
    names = [{r["alert"] for r in alerts(rule_groups(backups=b))} for b in (True, False)]
    assert "RingkvBackupMissing" in names[0] and names[1] == names[0] - {"RingkvBackupMissing"}
