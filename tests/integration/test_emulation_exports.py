"""Why emulated VMIs are, as the operator sees it: /metrics, OTLP and `detect`.

The agent runs in KubeVirt mode against the fake API server (VMIs, this node's Node, the KubeVirt
CR, through the real client); each launcher is a libvirt test-driver node. The companion series
carries the reason for emulated VMIs only; the main metric keeps its four labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otel_vmi_hv.cli import main
from tests.agent_process import wait_until
from tests.exposition import count_collections, parse_samples
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import (
    NODE,
    make_kubevirt,
    make_launcher_pod,
    make_node,
    make_vmi,
    with_software_emulation,
)
from tests.harness.otlp_receiver import RotelReceiver
from tests.integration.kube_env import (
    Launchers,
    emulated_and_accelerated,
    running_agent,
    set_detect_environment,
)


def _scrape(agent) -> str:
    return str(agent.telemetry.scrape().body.decode())


def _reasons(body: str) -> dict[tuple[str, str], str]:
    return {
        (labels["namespace"], labels["name"]): labels["reason"]
        for labels, value in parse_samples(body, "otel_vmi_hv_vmi_emulation_info")
        if value == 1
    }


def _kvm_available(body: str) -> list[float]:
    return [value for _, value in parse_samples(body, "otel_vmi_hv_node_kvm_available")]


def test_reasons_follow_the_node_the_cr_and_the_vmi(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    emulated_and_accelerated(api, pods)
    with running_agent(api, tmp_path, NODE, pods) as agent:
        wait_until(lambda: _reasons(_scrape(agent)) == {("ci", "runner"): "node_without_kvm"}, 10, "no KVM")
        body = _scrape(agent)
        assert _kvm_available(body) == [0.0]
        info = parse_samples(body, "kubevirt_vmi_hypervisor_info")
        assert {frozenset(labels) for labels, _ in info} == {
            frozenset({"namespace", "name", "node", "hypervisor_type"})
        }

        def add_kvm(node: dict[str, dict[str, dict[str, str]]]) -> None:
            node["status"]["allocatable"]["devices.kubevirt.io/kvm"] = "1k"

        api.patch("", NODE, add_kvm, kind="Node")  # KVM is there now; the launcher did not ask for it
        wait_until(lambda: _reasons(_scrape(agent)) == {("ci", "runner"): "kvm_not_requested"}, 10, "kvm")
        assert _kvm_available(_scrape(agent)) == [1.0]

        current = api.get("ci", "runner")
        assert current is not None
        api.update(with_software_emulation(current))
        wait_until(lambda: _reasons(_scrape(agent)) == {("ci", "runner"): "cross_arch"}, 10, "condition")


def test_detect_says_why_and_names_a_missing_rule(
    api: FakeKubeAPIServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods = tmp_path / "pods"
    vmi = make_vmi("ci", "runner", NODE)
    Launchers(pods).run_vmi(vmi, "qemu", NODE)
    api.create(vmi)
    api.create(make_node(NODE, None))
    api.create(make_kubevirt(True))
    set_detect_environment(monkeypatch, api, tmp_path, NODE, pods)

    assert main(["detect", "--output", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["hypervisor_type"], row["emulation_reason"]) == ("qemu-tcg", "node_without_kvm")
    assert "devices.kubevirt.io/kvm" in row["emulation_evidence"]

    api.forbid("nodes")
    assert main(["detect"]) == 0
    table = capsys.readouterr().out
    header, line = table.splitlines()[:2]
    assert header.split()[:5] == ["NAMESPACE", "NAME", "NODE", "HYPERVISOR", "WHY"]
    assert line.split()[3:5] == ["qemu-tcg", "unknown"]
    assert "needs get, list and watch on nodes" in table


def _accelerator(body: str) -> dict[str, float]:
    return {
        labels["device"]: value
        for labels, value in parse_samples(body, "otel_vmi_hv_node_accelerator_available")
    }


def test_hyperv_cluster_exports_its_device_in_metrics_and_otlp(
    api: FakeKubeAPIServer, tmp_path: Path, otlp_receiver: RotelReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hyperv-direct: the node's accelerator is mshv, and an emulated VMI is explained by it."""
    pods = tmp_path / "pods"
    emulated = make_vmi("ci", "runner", NODE)
    Launchers(pods).run_vmi(emulated, "qemu", NODE)
    api.create(emulated)
    api.create(make_node(NODE, None, mshv="1k"))
    api.create(make_kubevirt(True, hypervisor="hyperv-direct"))
    otlp = {
        "OTEL_METRICS_EXPORTER": "prometheus,otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
    }
    for name, value in otlp.items():  # the SDK's exporter reads its endpoint from the environment
        monkeypatch.setenv(name, value)
    with running_agent(api, tmp_path, NODE, pods, **otlp) as agent:
        wait_until(lambda: _reasons(_scrape(agent)) == {("ci", "runner"): "mshv_not_requested"}, 10, "mshv")
        body = _scrape(agent)
        assert _accelerator(body) == {"mshv": 1.0}
        assert _kvm_available(body) == [0.0], "no KVM on this node, and the gauge says so"

        def over_otlp() -> tuple[dict[str, int | float | None], set[str]] | None:
            gauge = otlp_receiver.latest_export("otel_vmi_hv_node_accelerator_available")
            reasons = otlp_receiver.latest_export("otel_vmi_hv_vmi_emulation_info")
            if gauge is None or reasons is None:
                return None
            devices = {
                str(p.attributes["device"]): p.value
                for p in gauge.of("otel_vmi_hv_node_accelerator_available")
            }
            return devices, {
                str(p.attributes["reason"]) for p in reasons.of("otel_vmi_hv_vmi_emulation_info")
            }

        wait_until(lambda: over_otlp() == ({"mshv": 1.0}, {"mshv_not_requested"}), 15, "the same over OTLP")
        assert otlp_receiver.errors == []


def test_kvm_cluster_exports_kvm_as_its_accelerator(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(None))
    with running_agent(api, tmp_path, NODE, pods) as agent:
        wait_until(lambda: _accelerator(_scrape(agent)) == {"kvm": 1.0}, 10, "the kvm device as accelerator")
        assert _kvm_available(_scrape(agent)) == [1.0]


def test_detect_names_the_missing_mshv_device(
    api: FakeKubeAPIServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods = tmp_path / "pods"
    vmi = make_vmi("ci", "runner", NODE)
    Launchers(pods).run_vmi(vmi, "qemu", NODE)
    api.create(vmi)
    api.create(make_node(NODE, "1k"))  # KVM, but the cluster runs Hyper-V
    api.create(make_kubevirt(True, hypervisor="hyperv-direct"))
    set_detect_environment(monkeypatch, api, tmp_path, NODE, pods)
    assert main(["detect", "--output", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["hypervisor_type"], row["emulation_reason"]) == ("qemu-tcg", "node_without_mshv")
    assert "devices.kubevirt.io/mshv" in row["emulation_evidence"]
    assert main(["detect"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[1].split()[3:5] == ["qemu-tcg", "node_without_mshv"]
    assert (
        "why emulated, node_without_mshv: node worker-1 has no allocatable devices.kubevirt.io/mshv" in table
    )


def test_detect_shows_what_the_launcher_requested_where_pods_may_be_read(
    api: FakeKubeAPIServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods = tmp_path / "pods"
    vmi = make_vmi("ci", "runner", NODE)
    Launchers(pods).run_vmi(vmi, "qemu", NODE)
    api.create(vmi)
    api.create(make_launcher_pod(vmi, NODE, device=None))
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(True))
    set_detect_environment(monkeypatch, api, tmp_path, NODE, pods)

    assert main(["detect", "--output", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["emulation_reason"] == "kvm_not_requested"
    assert "launcher pod ci/virt-launcher-runner-" in row["emulation_evidence"]
    assert "requests no devices.kubevirt.io/kvm" in row["emulation_evidence"]

    api.forbid("pods")  # the ClusterRole without the pods rule: everything as before
    assert main(["detect", "--output", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["emulation_reason"] == "kvm_not_requested"
    assert "launcher" not in row["emulation_evidence"] and "useEmulation: true" in row["emulation_evidence"]
    assert main(["detect"]) == 0
    assert "cannot tell why" not in capsys.readouterr().out


def test_the_launcher_pod_is_read_without_any_scrape(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    """Prometheus pull only and nobody scrapes: the lookup follows the detection, not a collection."""
    pods = tmp_path / "pods"
    vmi = make_vmi("ci", "runner", NODE)
    Launchers(pods).run_vmi(vmi, "qemu", NODE)
    api.create(vmi)
    api.create(make_launcher_pod(vmi, NODE, device=None))
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(True))
    with running_agent(api, tmp_path, NODE, pods, OTEL_METRICS_EXPORTER="prometheus") as agent:
        assert agent.telemetry is not None
        collections = count_collections(agent)
        api.wait_for(
            lambda: any(r.resource == "pods" and r.verb == "list" for r in api.requests),
            "the launcher pod listed",
            timeout=10,
        )

        def launcher_said() -> bool:
            return any(
                "launcher pod ci/virt-launcher-runner-" in e
                for _, e in agent.emulation.explanations().values()
            )

        wait_until(launcher_said, 10, "the launcher's answer published")
        [(reason, _)] = agent.emulation.explanations().values()
        assert reason == "kvm_not_requested"
        assert collections == [], "no collection happened"
