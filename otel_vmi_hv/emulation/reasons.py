"""Why a VMI runs under QEMU TCG: one reason from the facts KubeVirt leaves behind, with evidence.

KubeVirt decides acceleration per launcher pod: with emulation not allowed the launcher requests
the extended resource ``devices.kubevirt.io/kvm`` (and fails without ``/dev/kvm``); with the
KubeVirt CR's ``developerConfiguration.useEmulation: true`` it requests none and runs TCG even on
a node with KVM. Cross-architecture guests run TCG by design and carry the ``SoftwareEmulation``
condition. So a Running TCG VMI is explained, in this order, by its condition, by its node having
no KVM, or by the cluster allowing emulation; when a fact cannot be read the reason is ``unknown``
and the evidence says what is missing. This module only decides; the facts are read elsewhere.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from otel_vmi_hv.model import SoftwareEmulation


class EmulationReason(enum.StrEnum):
    CROSS_ARCH = "cross_arch"
    NODE_WITHOUT_KVM = "node_without_kvm"
    KVM_NOT_REQUESTED = "kvm_not_requested"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class NodeKvm:
    """Whether the node offers KVM (None: not known), and what that was read from or why not."""

    available: bool | None
    evidence: str


@dataclass(frozen=True, slots=True)
class EmulationPolicy:
    """Whether the cluster lets launchers run without KVM (None: not known), and the evidence."""

    allowed: bool | None
    evidence: str


@dataclass(frozen=True, slots=True)
class Explanation:
    reason: EmulationReason
    evidence: str


def explain_emulation(
    condition: SoftwareEmulation | None, node: NodeKvm, policy: EmulationPolicy | None
) -> Explanation:
    """The reason one VMI reported ``qemu-tcg`` is emulated.

    ``policy`` is None on a plain libvirt host, where no cluster policy exists: a TCG domain on a
    host with usable KVM was simply defined that way.
    """
    if condition is not None:
        detail = condition.message or condition.reason or "status True"
        return Explanation(
            EmulationReason.CROSS_ARCH, f"VMI condition SoftwareEmulation=True ({condition.reason}): {detail}"
        )
    if node.available is False:
        return Explanation(EmulationReason.NODE_WITHOUT_KVM, node.evidence)
    if policy is None:
        if node.available:
            return Explanation(
                EmulationReason.KVM_NOT_REQUESTED, f"{node.evidence}; the domain is defined with type='qemu'"
            )
        return Explanation(EmulationReason.UNKNOWN, node.evidence)
    if node.available is None:
        return Explanation(EmulationReason.UNKNOWN, node.evidence)
    if policy.allowed:
        return Explanation(EmulationReason.KVM_NOT_REQUESTED, f"{node.evidence}; {policy.evidence}")
    if policy.allowed is None:
        return Explanation(EmulationReason.UNKNOWN, f"{node.evidence}; {policy.evidence}")
    return Explanation(
        EmulationReason.UNKNOWN,
        f"{node.evidence}; {policy.evidence}: emulation is not allowed now, so the VMI probably"
        " started while it was (a restart of the VMI should bring KVM)",
    )
