"""The agent run as users run it, on libvirt's test driver with the shipped demo node."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from tests.agent_process import AgentProcess, demo_uri, http_get, wait_until
from tests.conftest import DEMO_NODE, ROOT
from tests.exposition import info_series, parse_samples

# The README's table of libvirt domain types, spelled out here rather than taken from the code
# under test (an expectation computed by the mapping itself could never fail).
README_TYPES = {"kvm": "kvm", "qemu": "qemu-tcg", "hyperv": "mshv"}


def _expected_demo_series() -> dict[tuple[str, str], str]:
    """What the demo node should produce, read from the demo XML itself."""
    expected = {}
    for domain in ET.parse(DEMO_NODE).getroot().iter("domain"):
        name = domain.findtext("name") or ""
        namespace, sep, vmi = name.partition("_")
        key = (namespace, vmi) if sep and " " not in name else ("", name)
        expected[key] = README_TYPES[domain.get("type", "")]
    return expected


@pytest.fixture(scope="module")
def demo_agent() -> Iterator[AgentProcess]:
    with AgentProcess({"OTEL_VMI_HV_SOURCE": "libvirt", "OTEL_VMI_HV_LIBVIRT_URI": demo_uri()}) as agent:
        agent.wait_ready()  # ready = listed; the detections finish just after
        wait_until(lambda: len(info_series(agent.metrics())) == 6, 10, "all six demo domains detected")
        yield agent


def test_demo_node_has_the_promised_variety() -> None:
    expected = _expected_demo_series()
    assert len(expected) >= 6
    assert {"kvm", "qemu-tcg", "mshv"} <= set(expected.values())
    assert any(namespace == "" for namespace, _ in expected)


def test_one_series_per_running_domain_with_its_type(demo_agent: AgentProcess) -> None:
    series = info_series(demo_agent.metrics())
    assert {key: labels["hypervisor_type"] for key, labels in series.items()} == _expected_demo_series()


def test_series_carry_exactly_the_four_labels(demo_agent: AgentProcess) -> None:
    body = demo_agent.metrics()
    for labels in info_series(body).values():
        assert set(labels) == {"namespace", "name", "node", "hypervisor_type"}
        assert labels["node"] == "test-node"
    assert "otel_scope" not in body
    assert "target_info" not in body


def test_metric_has_help_and_gauge_type(demo_agent: AgentProcess) -> None:
    body = demo_agent.metrics()
    assert (
        "# HELP kubevirt_vmi_hypervisor_info Information about the hypervisor type used by a "
        "VirtualMachineInstance\n" in body
    )
    assert "# TYPE kubevirt_vmi_hypervisor_info gauge\n" in body


def test_self_metrics_report_detections_without_per_vmi_labels(demo_agent: AgentProcess) -> None:
    body = demo_agent.metrics()
    vmis = {labels["state"]: value for labels, value in parse_samples(body, "otel_vmi_hv_vmis")}
    assert vmis == {"detected": len(_expected_demo_series()), "unknown": 0, "pending": 0}
    connections = {labels["state"]: v for labels, v in parse_samples(body, "otel_vmi_hv_libvirt_connections")}
    assert connections["connected"] == 1
    for line in body.splitlines():
        # The one per-VMI companion series, by design (README "Why a VMI is emulated"): only there.
        if line.startswith("otel_vmi_hv_") and not line.startswith("otel_vmi_hv_vmi_emulation_info{"):
            assert "name=" not in line and "namespace=" not in line, line


def test_health_and_readiness_endpoints(demo_agent: AgentProcess) -> None:
    assert http_get(f"{demo_agent.base_url}/healthz") == (200, "ok\n")
    assert http_get(f"{demo_agent.base_url}/readyz") == (200, "ready\n")
    assert http_get(f"{demo_agent.base_url}/nope")[0] == 404


def test_metrics_content_type_is_prometheus_text(demo_agent: AgentProcess) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{demo_agent.base_url}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_sigterm_stops_within_five_seconds() -> None:
    with AgentProcess({"OTEL_VMI_HV_SOURCE": "libvirt", "OTEL_VMI_HV_LIBVIRT_URI": demo_uri()}) as agent:
        agent.wait_ready()
        took = agent.terminate()
        assert agent.process is not None and agent.process.returncode == 0, agent.output()
        assert took < 5.0


def _detect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "otel_vmi_hv",
            "detect",
            "--source",
            "libvirt",
            "--libvirt-uri",
            demo_uri(),
            "--node-name",
            "demo",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_detect_prints_a_table_of_every_domain() -> None:
    result = _detect()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n\n")[0].splitlines()  # the table; notes follow a blank line
    assert lines[0].split() == ["NAMESPACE", "NAME", "NODE", "HYPERVISOR", "WHY", "METHOD", "SOURCE", "ERROR"]
    assert len(lines) == 1 + len(_expected_demo_series())
    assert any(line.split()[:4] == ["ci", "build-runner-7", "demo", "qemu-tcg"] for line in lines)


def test_detect_json_matches_the_demo_node() -> None:
    result = _detect("--output", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    got = {(row["namespace"], row["name"]): row["hypervisor_type"] for row in report}
    assert got == _expected_demo_series()
    assert all(row["method"] == "libvirt" and row["node"] == "demo" for row in report)
