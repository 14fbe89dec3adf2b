"""100,000 distinct VMIs created and deleted through the API server, about 100 running at a time,
in one agent process: the output stays exact (no overflow series, no lost or stale VMI) and the
agent's memory stays bounded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.agent_process import AgentProcess, wait_until
from tests.exposition import info_series
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import make_vmi
from tests.integration.kube_env import TEST_DRIVER_TEMPLATE, Launchers

TOTAL = int(os.environ.get("OTEL_VMI_HV_CHURN_TOTAL", "100000"))
RUNNING = 100
NODE = "churn-node"
RSS_GROWTH_LIMIT_MIB = 20


# A short history keeps the fake's own memory flat; the agent never needs to resume far back.
pytestmark = pytest.mark.fake_api(bookmark_interval=1.0, history_window=300)


def test_churn_of_100k_vmis_stays_exact_and_bounded(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    launchers = Launchers(pods)
    template = make_vmi("churn", "template", NODE, pod_uid="p")

    def virt(index: int) -> str:
        return "qemu" if index % 3 == 0 else "kvm"

    def create(index: int) -> None:
        launchers.run(f"pod-{index}", "churn", f"vm-{index}", virt(index))
        metadata: dict[str, Any] = {**template["metadata"], "name": f"vm-{index}", "uid": f"uid-{index}"}
        status = {**template["status"], "activePods": {f"pod-{index}": NODE}}
        api.create({**template, "metadata": metadata, "status": status})

    def remove(index: int) -> None:
        api.delete("churn", f"vm-{index}")
        (pods / f"pod-{index}" / "node.xml").unlink()
        (pods / f"pod-{index}").rmdir()

    env = {
        "KUBECONFIG": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
        "OTEL_VMI_HV_SOURCE": "kubernetes",
        "OTEL_VMI_HV_NODE_NAME": NODE,
        "OTEL_VMI_HV_PODS_ROOT": str(pods),
        "OTEL_VMI_HV_LIBVIRT_URI": TEST_DRIVER_TEMPLATE,
        "OTEL_VMI_HV_LOG_LEVEL": "error",  # launchers removed before their detection ran are expected
    }

    def visible(agent: AgentProcess) -> dict[tuple[str, str], str]:
        return {k: v["hypervisor_type"] for k, v in info_series(agent.metrics()).items()}

    with AgentProcess(env) as agent:
        agent.wait_ready()
        assert agent.process is not None
        for index in range(RUNNING):
            create(index)
        wait_until(lambda: len(visible(agent)) == RUNNING, 30, "the first 100 VMIs")
        rss_before = agent.rss_mib()
        for index in range(RUNNING, TOTAL):
            remove(index - RUNNING)
            create(index)
            if index % 5_000 == 0:  # a scrape now and then, as Prometheus would: always exact
                wait_until(lambda index=index: ("churn", f"vm-{index}") in visible(agent), 60, "catch-up")  # type: ignore[misc]
                assert len(visible(agent)) == RUNNING
        expected = {
            ("churn", f"vm-{i}"): virt(i).replace("qemu", "qemu-tcg") for i in range(TOTAL - RUNNING, TOTAL)
        }
        wait_until(lambda: visible(agent) == expected, 60, "exactly the last 100 VMIs with their types")
        body = agent.metrics()
        rss_after = agent.rss_mib()
        assert "otel_metric_overflow" not in body and "overflow" not in body
        print(f"\nchurn of {TOTAL:,} VMIs through the API: agent RSS {rss_before:.1f} → {rss_after:.1f} MiB")
        assert rss_after - rss_before < RSS_GROWTH_LIMIT_MIB
