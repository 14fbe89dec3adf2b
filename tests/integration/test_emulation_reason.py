"""Why a VMI is emulated, from the Node and the KubeVirt CR served by the fake API server.

Everything goes through the real ``kubernetes`` client: the agent's list-watches of its Node and of
the KubeVirt CR, and the VMI source for the SoftwareEmulation condition.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_vmi_hv.emulation.cluster_facts import ClusterFacts
from otel_vmi_hv.emulation.cluster_objects import ObjectCache
from otel_vmi_hv.interfaces import Snapshot
from otel_vmi_hv.model import VMI, LibvirtTarget, Series
from tests.agent_process import wait_until
from tests.fakes.kube_apiserver import FakeKubeAPIServer, RecordedRequest
from tests.fakes.kubevirt_objects import (
    KVM_DEVICE_RESOURCE,
    MSHV_DEVICE_RESOURCE,
    NODE,
    make_kubevirt,
    make_launcher_pod,
    make_node,
    make_vmi,
    with_software_emulation,
)
from tests.integration.kube_env import Launchers, agent_settings, running_agent, samples

TCG_VMI = VMI(
    "uid-1", "ci", "build-runner", LibvirtTarget("qemu:///x", "ci_build-runner", "pod-1", pod_uid="pod-1")
)


class Facts:
    """ClusterFacts of NODE against the fake, following a snapshot of emulated VMIs (TCG_VMI at first)."""

    def __init__(self, api: FakeKubeAPIServer, tmp_path: Path) -> None:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        self.vmis = [TCG_VMI]
        self.facts = ClusterFacts(agent_settings(kubeconfig, NODE, tmp_path))
        self.facts.follow(self._snapshot)

    def _snapshot(self) -> Snapshot:
        rows = tuple((Series("qemu-tcg", vmi.name, vmi.namespace, NODE), vmi) for vmi in self.vmis)
        return Snapshot(len(self.vmis), (), 0, 0, rows)

    def explain(self, vmi: VMI = TCG_VMI) -> tuple[str, str]:
        return self.facts.explanations().get(vmi.key, ("", ""))

    def reason(self, vmi: VMI = TCG_VMI) -> str:
        return self.explain(vmi)[0]

    def evidence(self, vmi: VMI = TCG_VMI) -> str:
        return self.explain(vmi)[1]

    def wait_reason(self, reason: str, what: str) -> None:
        wait_until(lambda: self.reason() == reason, 10, what)


@pytest.fixture
def facts(api: FakeKubeAPIServer, tmp_path: Path) -> Iterator[Facts]:
    facts = Facts(api, tmp_path)
    facts.facts.start()
    try:
        yield facts
    finally:
        facts.facts.stop()


def test_node_without_kvm_device(api: FakeKubeAPIServer, facts: Facts) -> None:
    api.create(make_node(NODE, None))
    api.create(make_kubevirt(True))
    facts.wait_reason("node_without_kvm", "the node offers no KVM device")
    assert KVM_DEVICE_RESOURCE in facts.evidence() and NODE in facts.evidence()
    assert facts.facts.node_kvm_available() is False


def test_kvm_cluster_reports_the_kvm_device_as_its_accelerator(api: FakeKubeAPIServer, facts: Facts) -> None:
    api.create(make_node(NODE, "1k", mshv="1k"))  # an mshv device means nothing on a KVM cluster
    api.create(make_kubevirt(True))
    facts.wait_reason("kvm_not_requested", "KVM on the node, emulation allowed")
    assert facts.facts.node_accelerator_available() == ("kvm", True)
    assert facts.facts.node_kvm_available() is True


def test_hyperv_cluster_checks_the_mshv_device(api: FakeKubeAPIServer, facts: Facts) -> None:
    """A node offering /dev/mshv and no /dev/kvm, in a cluster configured for hyperv-direct."""
    api.create(make_node(NODE, None, mshv="1k"))
    api.create(make_kubevirt(True, hypervisor="hyperv-direct"))
    facts.wait_reason("mshv_not_requested", "the mshv device is there; the launcher did not ask for it")
    assert MSHV_DEVICE_RESOURCE in facts.evidence()
    assert facts.facts.node_accelerator_available() == ("mshv", True)
    assert facts.facts.node_kvm_available() is False, "the KVM gauge still says what it says: no KVM"


def test_hyperv_node_without_mshv(api: FakeKubeAPIServer, facts: Facts) -> None:
    api.create(make_node(NODE, "1k", mshv="0"))
    api.create(make_kubevirt(True, hypervisor="hyperv-direct"))
    facts.wait_reason("node_without_mshv", "no mshv device, whatever KVM the node has")
    assert MSHV_DEVICE_RESOURCE in facts.evidence() and NODE in facts.evidence()
    assert facts.facts.node_accelerator_available() == ("mshv", False)


def test_hypervisors_without_the_feature_gate_mean_kvm(api: FakeKubeAPIServer, facts: Facts) -> None:
    """KubeVirt ignores spec.configuration.hypervisors unless ConfigurableHypervisor is enabled."""
    api.create(make_node(NODE, None, mshv="1k"))
    api.create(make_kubevirt(True, hypervisor="hyperv-direct", feature_gate=False))
    facts.wait_reason("node_without_kvm", "the cluster runs KVM")
    assert facts.facts.node_accelerator_available() == ("kvm", False)
    assert "ConfigurableHypervisor" in facts.facts.describe_accelerator()


def test_switching_the_cluster_to_hyperv_changes_the_device(api: FakeKubeAPIServer, facts: Facts) -> None:
    api.create(make_node(NODE, None, mshv="1k"))
    api.create(make_kubevirt(True))
    facts.wait_reason("node_without_kvm", "a KVM cluster at first")
    version = facts.facts.version

    def configure_hyperv(cr: dict[str, dict[str, dict[str, Any]]]) -> None:
        configuration = cr["spec"]["configuration"]
        configuration["hypervisors"] = [{"name": "hyperv-direct"}]
        configuration["developerConfiguration"]["featureGates"] = ["ConfigurableHypervisor"]

    api.patch("kubevirt", "kubevirt", configure_hyperv, kind="KubeVirt")
    facts.wait_reason("mshv_not_requested", "the CR now configures hyperv-direct")
    assert facts.facts.version > version
    assert facts.facts.node_accelerator_available() == ("mshv", True)


def test_node_with_zero_kvm_devices(api: FakeKubeAPIServer, facts: Facts) -> None:
    api.create(make_node(NODE, "0"))
    api.create(make_kubevirt(True))
    facts.wait_reason("node_without_kvm", "an allocatable of 0 is no KVM")
    assert facts.facts.node_kvm_available() is False


def test_kvm_not_requested_when_the_cluster_allows_emulation(api: FakeKubeAPIServer, facts: Facts) -> None:
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(True))
    facts.wait_reason("kvm_not_requested", "KVM on the node, emulation allowed")
    evidence = facts.evidence()
    assert "useEmulation: true" in evidence and "kubevirt/kubevirt" in evidence
    assert facts.facts.node_kvm_available() is True


def test_other_nodes_do_not_count(api: FakeKubeAPIServer, facts: Facts) -> None:
    api.create(make_node("worker-2", "1k"))  # KVM elsewhere: says nothing about this node
    api.create(make_node(NODE, None))
    api.create(make_kubevirt(True))
    facts.wait_reason("node_without_kvm", "only this node's allocatable matters")
    lists = [r for r in api.requests if r.resource == "nodes" and r.verb in ("list", "watch")]
    assert lists and all(r.params.get("fieldSelector") == f"metadata.name={NODE}" for r in lists)


def test_cross_arch_condition_wins(api: FakeKubeAPIServer, facts: Facts, tmp_path: Path) -> None:
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(True))
    facts.wait_reason("kvm_not_requested", "facts read")
    pods = tmp_path / "pods"
    launchers = Launchers(pods)
    vmi = with_software_emulation(make_vmi("ci", "arm-builder", NODE))
    launchers.run_vmi(vmi, "qemu", NODE)
    api.create(vmi)
    with running_agent(api, tmp_path, NODE, pods) as agent:
        wait_until(lambda: len(agent.tracker.detections()) == 1, 10, "the VMI in the tracker")
        [(seen, _)] = agent.tracker.detections()
        facts.vmis = [seen]
        facts.facts.wake()
        wait_until(lambda: facts.reason(seen) == "cross_arch", 10, "the condition explains it")
        reason, evidence = facts.explain(seen)
    assert reason == "cross_arch"
    assert "CrossArchitectureEmulation" in evidence and "guest=arm64" in evidence


def test_condition_change_reaches_the_tracker_as_a_changed_vmi(
    api: FakeKubeAPIServer, tmp_path: Path
) -> None:
    pods = tmp_path / "pods"
    vmi = make_vmi("ci", "builder", NODE)
    Launchers(pods).run_vmi(vmi, "qemu", NODE)
    api.create(vmi)
    with running_agent(api, tmp_path, NODE, pods) as agent:
        wait_until(lambda: len(agent.tracker.detections()) == 1, 10, "the VMI in the tracker")
        assert agent.tracker.detections()[0][0].software_emulation is None
        conditions = with_software_emulation(api.get("ci", "builder") or {})["status"]["conditions"]
        api.patch_status("ci", "builder", conditions=conditions)
        wait_until(
            lambda: agent.tracker.detections()[0][0].software_emulation is not None,
            10,
            "the condition on the tracked VMI",
        )
        api.patch_status("ci", "builder", conditions=[])
        wait_until(
            lambda: agent.tracker.detections()[0][0].software_emulation is None,
            10,
            "the condition gone again",
        )


def test_kvm_appearing_on_the_node_changes_the_reason(api: FakeKubeAPIServer, facts: Facts) -> None:
    api.create(make_node(NODE, None))
    api.create(make_kubevirt(True))
    facts.wait_reason("node_without_kvm", "no KVM at first")
    version = facts.facts.version

    def add_kvm(node: dict[str, dict[str, dict[str, str]]]) -> None:
        node["status"]["allocatable"][KVM_DEVICE_RESOURCE] = "1k"

    api.patch("", NODE, add_kvm, kind="Node")  # virt-handler's device plugin found /dev/kvm
    facts.wait_reason("kvm_not_requested", "KVM appeared; the launcher still did not ask for it")
    assert facts.facts.version > version
    assert facts.facts.node_kvm_available() is True


def test_emulation_switched_off(api: FakeKubeAPIServer, facts: Facts) -> None:
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(True))
    facts.wait_reason("kvm_not_requested", "emulation allowed at first")
    version = facts.facts.version

    def disallow(cr: dict[str, dict[str, dict[str, dict[str, bool]]]]) -> None:
        cr["spec"]["configuration"]["developerConfiguration"]["useEmulation"] = False

    api.patch("kubevirt", "kubevirt", disallow, kind="KubeVirt")
    facts.wait_reason("unknown", "emulation no longer allowed: the running VMI is left unexplained")
    assert "not allowed" in facts.evidence() and "restart" in facts.evidence()
    assert facts.facts.version > version


def test_no_kubevirt_cr(api: FakeKubeAPIServer, facts: Facts) -> None:
    api.create(make_node(NODE, "1k"))
    facts.wait_reason("unknown", "without a KubeVirt CR the policy is unknown")
    wait_until(lambda: "no KubeVirt CR" in facts.evidence(), 10, "the evidence says what is missing")


def test_nodes_forbidden_names_the_missing_rule(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    api.forbid("nodes")
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(True))
    facts = Facts(api, tmp_path)
    facts.facts.start()
    try:
        wait_until(lambda: "nodes" in facts.evidence() and "forbidden" in facts.evidence(), 10, "a 403")
        assert facts.reason() == "unknown"
        assert "get, list and watch on nodes" in facts.evidence()
        assert facts.facts.node_kvm_available() is None
        assert any("get, list and watch on nodes" in p for p in facts.facts.problems())
        api.allow("nodes")  # the rule is granted: the facts come without a restart
        facts.wait_reason("kvm_not_requested", "the node readable again")
        assert facts.facts.problems() == []
    finally:
        facts.facts.stop()


def test_kubevirts_forbidden_names_the_missing_rule(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    api.forbid("kubevirts")
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(True))
    facts = Facts(api, tmp_path)
    facts.facts.start()
    try:
        wait_until(lambda: "get, list and watch on kubevirts.kubevirt.io" in facts.evidence(), 10, "a 403")
        assert facts.reason() == "unknown"
        assert facts.facts.node_kvm_available() is True, "the node is still read"
    finally:
        facts.facts.stop()


def test_forbidden_kubevirts_do_not_hide_a_node_without_kvm(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    api.forbid("kubevirts")
    api.create(make_node(NODE, None))
    facts = Facts(api, tmp_path)
    facts.facts.start()
    try:
        facts.wait_reason("node_without_kvm", "no KVM on the node needs no policy to explain")
    finally:
        facts.facts.stop()


def test_facts_are_cached_not_read_per_call(api: FakeKubeAPIServer, facts: Facts) -> None:
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(True))
    facts.wait_reason("kvm_not_requested", "facts read")
    before = len(api.requests)
    for _ in range(200):
        facts.facts.explanations()
        facts.facts.node_kvm_available()
    assert len([r for r in api.requests[before:] if r.verb in ("list", "get")]) == 0


# ------------------------------------------------------------------ the launcher pod's own word

LAUNCHED = make_vmi("ci", "build-runner", NODE, pod_uid="pod-1", uid="uid-1")  # TCG_VMI as the API has it


def _pod_requests(api: FakeKubeAPIServer) -> list[RecordedRequest]:
    return [r for r in api.requests if r.resource == "pods"]


def test_launcher_pod_confirms_the_device_was_not_requested(api: FakeKubeAPIServer, facts: Facts) -> None:
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(True))
    api.create(make_launcher_pod(LAUNCHED, NODE, device=None))
    wait_until(lambda: "launcher pod ci/virt-launcher-build-runner-" in facts.evidence(), 10, "the pod read")
    assert facts.reason() == "kvm_not_requested"
    assert "requests no devices.kubevirt.io/kvm" in facts.evidence()
    assert "useEmulation: true" in facts.evidence(), "the CR's word stays beside the launcher's"
    for _ in range(50):
        facts.evidence()
    (lookup,) = _pod_requests(api)  # one narrowed list per launcher, cached; never a watch
    assert (lookup.verb, lookup.namespace, lookup.kind) == ("list", "ci", "cached_list")
    assert lookup.params["labelSelector"] == "kubevirt.io/created-by=uid-1"
    assert lookup.params["fieldSelector"] == f"spec.nodeName={NODE}"


def test_launcher_pod_explains_a_vmi_started_while_emulation_was_allowed(
    api: FakeKubeAPIServer, facts: Facts
) -> None:
    """The CR disallows emulation now; the launcher shows the VMI started without KVM all the same."""
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(False))
    api.create(make_launcher_pod(LAUNCHED, NODE, device=None))
    facts.wait_reason("kvm_not_requested", "the launcher's request settles it")
    assert "requests no devices.kubevirt.io/kvm" in facts.evidence() and "restart" in facts.evidence()


def test_launcher_pod_that_requested_the_device_leaves_tcg_unexplained(
    api: FakeKubeAPIServer, facts: Facts
) -> None:
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(True))
    api.create(make_launcher_pod(LAUNCHED, NODE, device="kvm"))
    wait_until(lambda: "requests devices.kubevirt.io/kvm: 1" in facts.evidence(), 10, "the pod read")
    assert facts.reason() == "unknown"


def test_hyperv_launcher_pod_is_checked_for_mshv(api: FakeKubeAPIServer, facts: Facts) -> None:
    api.create(make_node(NODE, None, mshv="1k"))
    api.create(make_kubevirt(False, hypervisor="hyperv-direct"))
    api.create(make_launcher_pod(LAUNCHED, NODE, device=None))
    facts.wait_reason("mshv_not_requested", "the launcher did not ask for mshv")
    assert "requests no devices.kubevirt.io/mshv" in facts.evidence()


def test_without_rbac_on_pods_the_reason_comes_from_the_node_and_the_cr(
    api: FakeKubeAPIServer, facts: Facts
) -> None:
    api.forbid("pods")
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(True))
    api.create(make_launcher_pod(LAUNCHED, NODE, device=None))
    facts.wait_reason("kvm_not_requested", "from the CR, as before")
    wait_until(lambda: len(_pod_requests(api)) == 1 and facts.facts.settled(), 10, "the 403")
    for _ in range(50):
        assert facts.reason() == "kvm_not_requested"
        assert "launcher" not in facts.evidence()
    assert len(_pod_requests(api)) == 1, "a 403 is not asked again at every scrape"
    assert facts.facts.problems() == []


def test_a_bug_in_the_node_watch_handler_is_counted_not_hidden(
    api: FakeKubeAPIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_cache: ObjectCache) -> None:
        raise ValueError("a handler bug")

    monkeypatch.setattr(ObjectCache, "relist_done", broken)
    api.create(make_node(NODE, "1k"))
    api.create(make_kubevirt(True))
    with running_agent(api, tmp_path, NODE, tmp_path / "pods") as agent:
        wait_until(
            lambda: sum(value for _, value in samples(agent, "otel_vmi_hv_watch_handler_errors_total")) >= 2,
            10,
            "the Node and KubeVirt CR watches' bugs counted",
        )
        assert not samples(agent, "otel_vmi_hv_watch_restarts_total"), (
            "their restarts are not the VMI watch's"
        )
