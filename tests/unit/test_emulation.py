"""The reason for one emulated VMI, from each combination of facts."""

from __future__ import annotations

from collections.abc import Callable

from otel_vmi_hv.detect_report import render_table, rows
from otel_vmi_hv.emulation.cluster_objects import node_device_from
from otel_vmi_hv.emulation.reasons import (
    FIXES,
    EmulationPolicy,
    EmulationReason,
    LauncherRequest,
    NodeAccelerator,
    explain_emulation,
)
from otel_vmi_hv.model import VMI, Detection, DetectionMethod, LibvirtTarget, SoftwareEmulation
from tests.fakes.kubevirt_objects import make_node

KVM = NodeAccelerator("kvm", True, "node w1 allocatable devices.kubevirt.io/kvm=1k")
NO_KVM = NodeAccelerator("kvm", False, "node w1 has no allocatable devices.kubevirt.io/kvm")
MSHV = NodeAccelerator("mshv", True, "node w1 allocatable devices.kubevirt.io/mshv=1k")
NO_MSHV = NodeAccelerator("mshv", False, "node w1 has no allocatable devices.kubevirt.io/mshv")
NODE_UNREADABLE = NodeAccelerator(
    "kvm", None, "node w1: forbidden: the agent's ClusterRole needs get, list and watch on nodes"
)
UNKNOWN_HYPERVISOR = NodeAccelerator(None, None, "node w1: no device to check for this hypervisor")
ALLOWED = EmulationPolicy(True, "KubeVirt CR kubevirt/kubevirt allows emulation")
NOT_ALLOWED = EmulationPolicy(False, "KubeVirt CR kubevirt/kubevirt does not allow emulation")
POLICY_UNREADABLE = EmulationPolicy(None, "KubeVirt CR forbidden: needs get, list and watch on kubevirts")
CROSS = SoftwareEmulation(
    "CrossArchitectureEmulation", "VM running with software emulation (host=amd64, guest=arm64)"
)
ASKED_NOTHING = LauncherRequest(
    False, "launcher pod ci/virt-launcher-r-x requests no devices.kubevirt.io/kvm"
)
ASKED_KVM = LauncherRequest(True, "launcher pod ci/virt-launcher-r-x requests devices.kubevirt.io/kvm: 1")


def test_cross_arch_whatever_the_node_and_policy() -> None:
    for node in (KVM, NO_KVM, NODE_UNREADABLE, MSHV, UNKNOWN_HYPERVISOR):
        for policy in (ALLOWED, NOT_ALLOWED, POLICY_UNREADABLE, None):
            result = explain_emulation(CROSS, node, policy)
            assert result.reason == "cross_arch"
            assert "guest=arm64" in result.evidence


def test_node_without_the_device_needs_no_policy() -> None:
    for policy in (ALLOWED, NOT_ALLOWED, POLICY_UNREADABLE, None):
        result = explain_emulation(None, NO_KVM, policy)
        assert result.reason == "node_without_kvm"
        assert "devices.kubevirt.io/kvm" in result.evidence
        result = explain_emulation(None, NO_MSHV, policy)
        assert result.reason == "node_without_mshv"
        assert "devices.kubevirt.io/mshv" in result.evidence


def test_device_not_requested_when_emulation_is_allowed() -> None:
    result = explain_emulation(None, KVM, ALLOWED)
    assert result.reason == "kvm_not_requested"
    assert "allows emulation" in result.evidence and "kvm=1k" in result.evidence
    assert explain_emulation(None, MSHV, ALLOWED).reason == "mshv_not_requested"


def test_unreadable_node_is_unknown_and_names_the_rule() -> None:
    result = explain_emulation(None, NODE_UNREADABLE, ALLOWED)
    assert result.reason == "unknown"
    assert "get, list and watch on nodes" in result.evidence


def test_a_hypervisor_without_a_known_device_is_unknown() -> None:
    result = explain_emulation(None, UNKNOWN_HYPERVISOR, ALLOWED, ASKED_NOTHING)
    assert result.reason == "unknown" and "no device to check" in result.evidence


def test_unreadable_policy_is_unknown_and_names_the_rule() -> None:
    result = explain_emulation(None, KVM, POLICY_UNREADABLE)
    assert result.reason == "unknown"
    assert "kubevirts" in result.evidence


def test_emulation_not_allowed_on_a_kvm_node_is_unknown_with_a_hint() -> None:
    result = explain_emulation(None, KVM, NOT_ALLOWED)
    assert result.reason == "unknown"
    assert "restart" in result.evidence


def test_the_launcher_pod_settles_not_requested_whatever_the_policy_says() -> None:
    for policy in (ALLOWED, NOT_ALLOWED, POLICY_UNREADABLE):
        result = explain_emulation(None, KVM, policy, ASKED_NOTHING)
        assert result.reason == "kvm_not_requested"
        assert "requests no devices.kubevirt.io/kvm" in result.evidence and policy.evidence in result.evidence
    switched_off = explain_emulation(None, KVM, NOT_ALLOWED, ASKED_NOTHING)
    assert "restart" in switched_off.evidence, "emulation allowed when it started, not any more"


def test_a_launcher_that_got_the_device_leaves_tcg_unexplained() -> None:
    result = explain_emulation(None, KVM, ALLOWED, ASKED_KVM)
    assert result.reason == "unknown" and "requests devices.kubevirt.io/kvm: 1" in result.evidence


def test_the_launcher_does_not_override_a_node_without_the_device() -> None:
    assert explain_emulation(None, NO_KVM, ALLOWED, ASKED_NOTHING).reason == "node_without_kvm"


def test_plain_host() -> None:
    usable = NodeAccelerator("kvm", True, "/dev/kvm is usable (KVM API version 12)")
    assert explain_emulation(None, usable, None).reason == "kvm_not_requested"
    missing = NodeAccelerator("kvm", False, "/dev/kvm is missing")
    assert explain_emulation(None, missing, None).reason == "node_without_kvm"
    odd = NodeAccelerator("kvm", None, "cannot open /dev/kvm: Input/output error")
    result = explain_emulation(None, odd, None)
    assert result.reason == "unknown" and "Input/output" in result.evidence


def _explained_as(reason: str) -> Callable[[VMI], tuple[str, str]]:
    return lambda _: (reason, "the evidence")


def test_every_reason_has_a_fix_that_detect_prints() -> None:
    assert set(FIXES) == set(EmulationReason)
    assert all(FIXES[reason].strip() for reason in EmulationReason)
    vmi = VMI("uid-1", "ci", "runner", LibvirtTarget("qemu:///x", "ci_runner", "1"))
    detection = Detection("qemu-tcg", DetectionMethod.LIBVIRT)
    for reason in EmulationReason:
        table = render_table(rows([(vmi, detection)], "w1", _explained_as(reason)))
        assert f"why emulated, {reason}: the evidence" in table
        assert f"fix for {reason}: {FIXES[reason]}" in table


def test_a_node_quantity_that_is_no_number_is_unknown_not_a_crash() -> None:
    for odd in ("NaN", "Infinity", "lots", ""):
        accelerator = node_device_from(make_node("w1", odd), "w1", "kvm")
        assert accelerator.available is None, odd
        assert "is not a quantity" in accelerator.evidence
    assert node_device_from(make_node("w1", "1k"), "w1", "kvm").available is True
    assert node_device_from(make_node("w1", "0"), "w1", "kvm").available is False
