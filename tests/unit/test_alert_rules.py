"""``promtool test rules`` on every unit-test file of the alerts, as kube-prometheus does.

The tests themselves are files in ``config/prometheus/tests/`` (promtool's format: input series, then the
expected alerts with their labels and annotations at given times), next to the rules they test, so an
operator who edits a rule can run ``promtool test rules config/prometheus/tests/*.yml`` alone.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.peers import require

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "rules.yml"
TEST_DIR = ROOT / "config" / "prometheus" / "tests"
TEST_FILES = sorted(TEST_DIR.glob("*.yml"))


def promtool(*args: str, cwd: Path = TEST_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("promtool"), *args], capture_output=True, text=True, check=False, timeout=120, cwd=cwd
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_names() -> set[str]:
    return {rule["alert"] for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule}


@pytest.mark.parametrize("test_file", TEST_FILES, ids=[path.name for path in TEST_FILES])
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_with_its_annotations() -> None:
    fired: set[str] = set()
    for path in TEST_FILES:
        for case in load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                alerts = check.get("exp_alerts") or []
                if alerts and all("exp_annotations" in alert for alert in alerts):
                    fired.add(check["alertname"])
    assert alert_names() <= fired, f"alerts without a firing test: {alert_names() - fired}"


def mutated_run(tmp_path: Path, old: str, new: str) -> subprocess.CompletedProcess[str]:
    """Run every test file against a copy of the rules with ``old`` replaced by ``new``."""
    text = RULES.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in the rules any more: update this test"
    (tmp_path / "rules.yml").write_text(text.replace(old, new), encoding="utf-8")
    tests = tmp_path / "tests"
    tests.mkdir()
    for path in TEST_FILES:
        shutil.copy(path, tests / path.name)
    return promtool("test", "rules", *(str(tests / path.name) for path in TEST_FILES), cwd=tests)


def test_tests_catch_a_lost_reason(tmp_path: Path) -> None:
    result = mutated_run(tmp_path, "group_left (reason)", "group_left ()")
    assert result.returncode != 0


def test_tests_catch_a_lost_fallback_for_vmis_without_kubevirt_info(tmp_path: Path) -> None:
    # Without the `or`, an emulated VMI that KubeVirt's own metric does not describe raises no alert.
    old = """
            or on (namespace, name, node)
              (kubevirt_vmi_hypervisor_info{hypervisor_type="qemu-tcg"} == 1)
"""
    assert mutated_run(tmp_path, old, "\n").returncode != 0


def test_tests_catch_a_wrong_fix_in_the_description(tmp_path: Path) -> None:
    result = mutated_run(tmp_path, "set useEmulation to false", "set useEmulation to true")
    assert result.returncode != 0
