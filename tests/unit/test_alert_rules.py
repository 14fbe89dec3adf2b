"""``promtool test rules`` on every unit-test file of the alerts, as kube-prometheus does, and the
alerts' KubeVirt conventions: labels, ``runbook_url`` and a runbook in KubeVirt's four-section format.

The tests themselves are files in ``config/prometheus/tests/`` (promtool's format: input series, then the
expected alerts with their labels and annotations at given times), next to the rules they test, so an
operator who edits a rule can run ``promtool test rules config/prometheus/tests/*.yml`` alone.
"""

from __future__ import annotations

import re
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
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_BASE = "docs/runbooks/"  # the default, relative to the repository (kustomization.yaml sets it too)
RUNBOOK_SECTIONS = ["Meaning", "Impact", "Diagnosis", "Mitigation"]
# KubeVirt's labels (kubevirt/monitoring's guidelines): part of KubeVirt, this agent as the component.
KUBEVIRT_LABELS = {"kubernetes_operator_part_of": "kubevirt", "kubernetes_operator_component": "otel-vmi-hv"}


def promtool(*args: str, cwd: Path = TEST_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("promtool"), *args], capture_output=True, text=True, check=False, timeout=120, cwd=cwd
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in alert_rules()}


@pytest.mark.parametrize("test_file", TEST_FILES, ids=[path.name for path in TEST_FILES])
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_with_its_annotations_and_kubevirts_labels() -> None:
    fired: set[str] = set()
    labels = {"severity", "operator_health_impact", *KUBEVIRT_LABELS}
    for path in TEST_FILES:
        for case in load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                alerts = check.get("exp_alerts") or []
                if alerts and all(
                    "exp_annotations" in alert and labels <= alert["exp_labels"].keys() for alert in alerts
                ):
                    fired.add(check["alertname"])
    assert alert_names() <= fired, f"alerts without a firing test: {alert_names() - fired}"


def test_every_alert_carries_kubevirts_labels_and_a_summary_and_description() -> None:
    assert "KubeVirtLowAcceleratorNodesCount" in alert_names()
    for rule in alert_rules():
        labels, annotations = rule["labels"], rule["annotations"]
        assert labels.get("severity") in ("info", "warning", "critical"), rule["alert"]
        assert labels.get("operator_health_impact") in ("none", "warning", "critical"), rule["alert"]
        assert KUBEVIRT_LABELS.items() <= labels.items(), rule["alert"]
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]


def markdown_anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text (code blocks skipped)."""
    anchors: set[str] = set()
    in_code = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and not in_code:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def level2_sections(text: str) -> list[str]:
    return re.findall(r"^## (.+?)\s*$", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S), re.MULTILINE)


def test_every_alert_links_its_runbook_in_kubevirts_format() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["annotations"].get("runbook_url") == f"{RUNBOOK_BASE}{name}.md", name
        text = (RUNBOOKS / f"{name}.md").read_text(encoding="utf-8")
        assert text.startswith(f"# {name}\n"), name
        assert level2_sections(text) == RUNBOOK_SECTIONS, name
        # The runbook justifies the labels the rule gives: they must not drift apart.
        impact = text.split("## Impact", 1)[1].split("## Diagnosis", 1)[0]
        for label in ("severity", "operator_health_impact", *KUBEVIRT_LABELS):
            assert f"`{label}: {rule['labels'][label]}`" in impact, f"{name}: {label} not justified"
    runbooks = {path.stem for path in RUNBOOKS.glob("*.md")} - {"README"}
    assert runbooks == alert_names(), "one runbook per alert, and no runbook of a deleted alert"
    index = re.findall(
        r"^\| \[(\w+)\]\(\1\.md\) \| (\w+) \| (\w+) \|$", (RUNBOOKS / "README.md").read_text(), re.M
    )
    assert sorted(index) == sorted(
        (rule["alert"], rule["labels"]["severity"], rule["labels"]["operator_health_impact"])
        for rule in alert_rules()
    ), "docs/runbooks/README.md lists every alert with its labels"


def test_runbook_format_check_catches_a_fifth_section() -> None:
    text = (RUNBOOKS / "OtelVmiHvDown.md").read_text(encoding="utf-8") + "\n## Notes\n\nMore.\n"
    assert level2_sections(text) != RUNBOOK_SECTIONS


def test_runbook_links_resolve() -> None:
    for path in sorted(RUNBOOKS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.is_file(), f"{path.name}: {target} does not exist"
            if anchor:
                anchors = markdown_anchors(linked.read_text(encoding="utf-8"))
                assert anchor in anchors, f"{path.name}: no section #{anchor} in {linked.name}"


def test_anchor_check_catches_a_renamed_section() -> None:
    text = (RUNBOOKS / "KubeVirtVMIRunningUnderSoftwareEmulation.md").read_text(encoding="utf-8")
    assert "node_without_kvm" in markdown_anchors(text)
    assert "node_without_kvm" not in markdown_anchors(text.replace("### node_without_kvm", "### no_kvm"))


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


def test_tests_catch_a_node_counted_once_per_agent_pod(tmp_path: Path) -> None:
    # During a rollout two agent pods report one node; counted twice, one KVM node would look like two.
    old = "(max by (device, node) (otel_vmi_hv_node_accelerator_available))"
    assert mutated_run(tmp_path, old, "(otel_vmi_hv_node_accelerator_available)").returncode != 0


def test_tests_catch_a_capacity_alert_without_running_vmis(tmp_path: Path) -> None:
    old = "and on (node) kubevirt_vmi_hypervisor_info"
    assert mutated_run(tmp_path, old, "").returncode != 0


def test_tests_catch_a_kvm_only_count(tmp_path: Path) -> None:
    # Upstream's LowKVMNodesCount counts KVM nodes only, and misfires on a Hyper-V cluster.
    old = "(max by (device, node) (otel_vmi_hv_node_accelerator_available))"
    new = '(max by (device, node) (otel_vmi_hv_node_accelerator_available{device="kvm"}))'
    assert mutated_run(tmp_path, old, new).returncode != 0
