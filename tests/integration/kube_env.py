"""A KubeVirt node for tests: the fake API server plus per-launcher libvirt test-driver 'daemons'.

Each launcher pod gets its own libvirt URI, as in KubeVirt (one virtqemud per launcher): here a
test-driver node file under ``<pods_root>/<pod_uid>/``, reached through the agent's URI template.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from otel_vmi_hv.agent import Agent
from otel_vmi_hv.config import load_settings
from tests.exposition import info_series, parse_samples
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import NODE, make_kubevirt, make_node, make_vmi

TEST_DRIVER_TEMPLATE = "test://{pods_root}/{pod_uid}/node.xml"


class Launchers:
    """Writes the domain each launcher pod 'runs' into a test-driver node file."""

    def __init__(self, pods_root: Path) -> None:
        self.root = pods_root

    def run(self, pod_uid: str, namespace: str, name: str, virt_type: str) -> None:
        pod_dir = self.root / pod_uid
        pod_dir.mkdir(parents=True, exist_ok=True)
        (pod_dir / "node.xml").write_text(
            f"<node><domain type='{virt_type}'><name>{namespace}_{name}</name>"
            "<memory>1024</memory><os><type>hvm</type></os></domain></node>"
        )

    def run_vmi(self, vmi: dict[str, Any], virt_type: str, node: str) -> str:
        """Lay out the launcher of ``vmi`` on ``node``; returns its pod uid."""
        pod_uid = next(uid for uid, pod_node in vmi["status"]["activePods"].items() if pod_node == node)
        self.run(pod_uid, vmi["metadata"]["namespace"], vmi["metadata"]["name"], virt_type)
        return str(pod_uid)


def agent_settings(
    kubeconfig: Path, node: str, pods_root: Path, template: str = TEST_DRIVER_TEMPLATE, **extra: str
) -> Any:
    env = {
        "KUBECONFIG": str(kubeconfig),
        "OTEL_VMI_HV_SOURCE": "kubernetes",
        "OTEL_VMI_HV_NODE_NAME": node,
        "OTEL_VMI_HV_PODS_ROOT": str(pods_root),
        "OTEL_VMI_HV_LIBVIRT_URI": template,
        "OTEL_VMI_HV_LIBVIRT_TIMEOUT": "2s",
        "OTEL_VMI_HV_RELIST_SPREAD": "0s",  # relists at once: tests wait on outcomes, not on jitter
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": "0",
        "HOME": os.environ.get("HOME", "/root"),
    }
    env.update(extra)
    return load_settings(env)


@contextmanager
def running_agent(
    api: FakeKubeAPIServer, tmp_path: Path, node: str, pods_root: Path, **extra: str
) -> Iterator[Agent]:
    kubeconfig = api.write_kubeconfig(tmp_path / f"kubeconfig-{node}")
    agent = Agent(agent_settings(kubeconfig, node, pods_root, **extra))
    agent.start()
    try:
        yield agent
    finally:
        agent.stop(budget=2)


def _metrics_body(agent: Agent) -> str:
    """The /metrics body of an in-process agent (the one place these helpers reach into it)."""
    assert agent.telemetry is not None
    return agent.telemetry.scrape().body.decode()


def series(agent: Agent) -> dict[tuple[str, str], str]:
    return {key: labels["hypervisor_type"] for key, labels in info_series(_metrics_body(agent)).items()}


def node_labels(agent: Agent) -> set[str]:
    return {labels["node"] for labels in info_series(_metrics_body(agent)).values()}


def samples(agent: Agent, metric: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of one metric in the agent's /metrics body."""
    return parse_samples(_metrics_body(agent), metric)


def vmi_states(agent: Agent) -> dict[str, float]:
    """``otel_vmi_hv_vmis`` by state: every VMI the agent tracks, detected or still pending."""
    return {
        labels["state"]: value for labels, value in parse_samples(_metrics_body(agent), "otel_vmi_hv_vmis")
    }


def set_detect_environment(
    monkeypatch: Any, api: FakeKubeAPIServer, tmp_path: Path, node: str, pods_root: Path, **extra: str
) -> None:
    """The environment `otel-vmi-hv detect` reads, pointed at the fake API server and test launchers."""
    env = {
        "KUBECONFIG": str(api.write_kubeconfig(tmp_path / f"kubeconfig-detect-{node}")),
        "OTEL_VMI_HV_SOURCE": "kubernetes",
        "OTEL_VMI_HV_NODE_NAME": node,
        "OTEL_VMI_HV_PODS_ROOT": str(pods_root),
        "OTEL_VMI_HV_LIBVIRT_URI": TEST_DRIVER_TEMPLATE,
        **extra,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def emulated_and_accelerated(api: FakeKubeAPIServer, pods: Path, kvm: str | None = None) -> None:
    """Two VMIs on NODE: ``ci/runner`` under QEMU TCG and ``prod/web`` under KVM, a Node offering
    ``kvm`` devices (none by default) and a KubeVirt CR that allows emulation."""
    launchers = Launchers(pods)
    emulated, accelerated = make_vmi("ci", "runner", NODE), make_vmi("prod", "web", NODE)
    launchers.run_vmi(emulated, "qemu", NODE)
    launchers.run_vmi(accelerated, "kvm", NODE)
    for obj in (emulated, accelerated, make_node(NODE, kvm), make_kubevirt(True)):
        api.create(obj)
