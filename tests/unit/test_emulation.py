"""The reason for one emulated VMI, from each combination of facts."""

from __future__ import annotations

from otel_vmi_hv.emulation.reasons import EmulationPolicy, EmulationReason, NodeKvm, explain_emulation
from otel_vmi_hv.model import SoftwareEmulation

KVM = NodeKvm(True, "node w1 allocatable devices.kubevirt.io/kvm=1k")
NO_KVM = NodeKvm(False, "node w1 has no allocatable devices.kubevirt.io/kvm")
NODE_UNREADABLE = NodeKvm(
    None, "node w1: forbidden: the agent's ClusterRole needs get, list and watch on nodes"
)
ALLOWED = EmulationPolicy(True, "KubeVirt CR kubevirt/kubevirt allows emulation")
NOT_ALLOWED = EmulationPolicy(False, "KubeVirt CR kubevirt/kubevirt does not allow emulation")
POLICY_UNREADABLE = EmulationPolicy(None, "KubeVirt CR forbidden: needs get, list and watch on kubevirts")
CROSS = SoftwareEmulation(
    "CrossArchitectureEmulation", "VM running with software emulation (host=amd64, guest=arm64)"
)


def test_cross_arch_whatever_the_node_and_policy() -> None:
    for node in (KVM, NO_KVM, NODE_UNREADABLE):
        for policy in (ALLOWED, NOT_ALLOWED, POLICY_UNREADABLE, None):
            result = explain_emulation(CROSS, node, policy)
            assert result.reason is EmulationReason.CROSS_ARCH
            assert "guest=arm64" in result.evidence


def test_node_without_kvm_needs_no_policy() -> None:
    for policy in (ALLOWED, NOT_ALLOWED, POLICY_UNREADABLE, None):
        result = explain_emulation(None, NO_KVM, policy)
        assert result.reason is EmulationReason.NODE_WITHOUT_KVM
        assert "devices.kubevirt.io/kvm" in result.evidence


def test_kvm_not_requested_when_emulation_is_allowed() -> None:
    result = explain_emulation(None, KVM, ALLOWED)
    assert result.reason is EmulationReason.KVM_NOT_REQUESTED
    assert "allows emulation" in result.evidence and "kvm=1k" in result.evidence


def test_unreadable_node_is_unknown_and_names_the_rule() -> None:
    result = explain_emulation(None, NODE_UNREADABLE, ALLOWED)
    assert result.reason is EmulationReason.UNKNOWN
    assert "get, list and watch on nodes" in result.evidence


def test_unreadable_policy_is_unknown_and_names_the_rule() -> None:
    result = explain_emulation(None, KVM, POLICY_UNREADABLE)
    assert result.reason is EmulationReason.UNKNOWN
    assert "kubevirts" in result.evidence


def test_emulation_not_allowed_on_a_kvm_node_is_unknown_with_a_hint() -> None:
    result = explain_emulation(None, KVM, NOT_ALLOWED)
    assert result.reason is EmulationReason.UNKNOWN
    assert "restart" in result.evidence


def test_plain_host() -> None:
    usable = NodeKvm(True, "/dev/kvm is usable (KVM API version 12)")
    assert explain_emulation(None, usable, None).reason is EmulationReason.KVM_NOT_REQUESTED
    missing = NodeKvm(False, "/dev/kvm is missing")
    assert explain_emulation(None, missing, None).reason is EmulationReason.NODE_WITHOUT_KVM
    odd = NodeKvm(None, "cannot open /dev/kvm: Input/output error")
    result = explain_emulation(None, odd, None)
    assert result.reason is EmulationReason.UNKNOWN and "Input/output" in result.evidence
