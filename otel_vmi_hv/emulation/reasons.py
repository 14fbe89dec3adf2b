"""Why a VMI runs under QEMU TCG: one reason from the facts KubeVirt leaves behind, with evidence.

KubeVirt decides acceleration per launcher pod: with emulation not allowed the launcher requests the
extended resource of the cluster's hypervisor (``devices.kubevirt.io/kvm`` or ``.../mshv``) and fails
without the device; with ``developerConfiguration.useEmulation: true`` it requests none and runs TCG
even where the device exists. Cross-architecture guests run TCG by design and carry the
``SoftwareEmulation`` condition. So a TCG VMI is explained, in this order, by its condition, by its
node lacking the device, or by its launcher not having asked for it (the launcher pod's word where
it was read, else the cluster's policy); a fact that cannot be read gives ``unknown``. This module
only decides; the facts are read elsewhere.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from otel_vmi_hv.model import SoftwareEmulation

DEVICE_RESOURCE_PREFIX = "devices.kubevirt.io/"


class EmulationReason(enum.StrEnum):
    """The ``reason`` label of ``otel_vmi_hv_vmi_emulation_info`` and the WHY column of ``detect``."""

    CROSS_ARCH = "cross_arch"
    NODE_WITHOUT_KVM = "node_without_kvm"
    NODE_WITHOUT_MSHV = "node_without_mshv"
    KVM_NOT_REQUESTED = "kvm_not_requested"
    MSHV_NOT_REQUESTED = "mshv_not_requested"
    UNKNOWN = "unknown"


_RESTART = "then restart the VMI"
_NOT_REQUESTED_FIX = f"set the KubeVirt CR's useEmulation: false (or remove it), {_RESTART}"
FIXES = {
    EmulationReason.CROSS_ARCH: "by design; run it on a node of its own architecture if speed matters",
    EmulationReason.NODE_WITHOUT_KVM: "enable virtualization on the node (firmware, kvm_intel/kvm_amd, "
    f"nested virtualization), {_RESTART}",
    EmulationReason.NODE_WITHOUT_MSHV: f"enable the Microsoft Hypervisor on the node, {_RESTART}",
    EmulationReason.KVM_NOT_REQUESTED: _NOT_REQUESTED_FIX,
    EmulationReason.MSHV_NOT_REQUESTED: _NOT_REQUESTED_FIX,
    EmulationReason.UNKNOWN: "what the evidence names as missing (an RBAC rule, the KubeVirt CR, a restart)",
}


@dataclass(frozen=True, slots=True)
class NodeAccelerator:
    """Whether the node offers the hypervisor's device (None: not known), and the evidence.

    ``device`` is the device's short name (``kvm``, ``mshv``); None when the cluster's hypervisor is
    one this agent does not know, so no device can be checked.
    """

    device: str | None
    available: bool | None
    evidence: str


@dataclass(frozen=True, slots=True)
class EmulationPolicy:
    """Whether the cluster lets launchers run without the device (None: not known), and the evidence."""

    allowed: bool | None
    evidence: str


@dataclass(frozen=True, slots=True)
class LauncherRequest:
    """Whether the VMI's launcher pod requests the hypervisor device, as its pod spec says."""

    requested: bool
    evidence: str


class Explanation(NamedTuple):
    reason: EmulationReason
    evidence: str


def explain_emulation(
    condition: SoftwareEmulation | None,
    node: NodeAccelerator,
    policy: EmulationPolicy | None,
    launcher: LauncherRequest | None = None,
) -> Explanation:
    """The reason one VMI reported ``qemu-tcg`` is emulated.

    ``policy`` is None on a plain libvirt host, where no cluster policy exists: a TCG domain on a
    host with a usable device was simply defined that way. ``launcher`` settles
    ``<device>_not_requested`` even where the policy cannot be read or changed since the VMI started.
    """
    if condition is not None:
        detail = condition.message or condition.reason or "status True"
        evidence = f"VMI condition SoftwareEmulation=True ({condition.reason}): {detail}"
        return Explanation(EmulationReason.CROSS_ARCH, evidence)
    device = node.device
    if device is None or node.available is None:
        return Explanation(EmulationReason.UNKNOWN, node.evidence)
    if node.available is False:
        return Explanation(EmulationReason(f"node_without_{device}"), node.evidence)
    not_requested = EmulationReason(f"{device}_not_requested")
    if policy is None:
        return Explanation(not_requested, f"{node.evidence}; the domain is defined with type='qemu'")
    if launcher is not None and launcher.requested:
        # KubeVirt gives a launcher that got the device a domain of that type: TCG is unexplained.
        evidence = f"{node.evidence}; {launcher.evidence}, yet the domain runs under TCG"
        return Explanation(EmulationReason.UNKNOWN, evidence)
    if launcher is not None:
        changed = "; emulation was allowed when it started and is not any more (a restart brings the device)"
        note = changed if policy.allowed is False else ""
        return Explanation(not_requested, f"{node.evidence}; {launcher.evidence}; {policy.evidence}{note}")
    if policy.allowed:
        return Explanation(not_requested, f"{node.evidence}; {policy.evidence}")
    if policy.allowed is None:
        return Explanation(EmulationReason.UNKNOWN, f"{node.evidence}; {policy.evidence}")
    return Explanation(
        EmulationReason.UNKNOWN,
        f"{node.evidence}; {policy.evidence}: emulation is not allowed now, so the VMI probably"
        " started while it was (a restart of the VMI should bring the device)",
    )
