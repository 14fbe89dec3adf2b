"""Why a VMI runs under QEMU TCG: one reason from the facts KubeVirt leaves behind, with evidence.

KubeVirt decides acceleration per launcher pod: with emulation not allowed the launcher requests
the extended resource of the cluster's hypervisor (``devices.kubevirt.io/kvm``, or
``devices.kubevirt.io/mshv`` for Hyper-V) and fails without the device; with the KubeVirt CR's
``developerConfiguration.useEmulation: true`` it requests none and runs TCG even on a node that has
it. Cross-architecture guests run TCG by design and carry the ``SoftwareEmulation`` condition. So a
Running TCG VMI is explained, in this order, by its condition, by its node lacking the device, or by
its launcher not having asked for it (read from the launcher pod where the agent may, else inferred
from the cluster allowing emulation); when a fact cannot be read the reason is ``unknown`` and the
evidence says what is missing. The reasons that concern the device name it (``node_without_kvm``,
``node_without_mshv``, ``kvm_not_requested``, ``mshv_not_requested``). This module only decides; the
facts are read elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from otel_vmi_hv.model import SoftwareEmulation

CROSS_ARCH = "cross_arch"
UNKNOWN = "unknown"
DEVICE_RESOURCE_PREFIX = "devices.kubevirt.io/"


def node_without(device: str) -> str:
    """The reason for a node that lacks the hypervisor device: ``node_without_kvm``, ``node_without_mshv``."""
    return f"node_without_{device}"


def not_requested(device: str) -> str:
    """The reason for a launcher that did not ask for it: ``kvm_not_requested``, ``mshv_not_requested``."""
    return f"{device}_not_requested"


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


@dataclass(frozen=True, slots=True)
class Explanation:
    reason: str
    evidence: str


def explain_emulation(
    condition: SoftwareEmulation | None,
    node: NodeAccelerator,
    policy: EmulationPolicy | None,
    launcher: LauncherRequest | None = None,
) -> Explanation:
    """The reason one VMI reported ``qemu-tcg`` is emulated.

    ``policy`` is None on a plain libvirt host, where no cluster policy exists: a TCG domain on a
    host with a usable device was simply defined that way. ``launcher`` is what the launcher pod
    requests, when it could be read: it settles ``<device>_not_requested`` even where the cluster's
    policy cannot be read or has changed since the VMI started.
    """
    if condition is not None:
        detail = condition.message or condition.reason or "status True"
        return Explanation(CROSS_ARCH, f"VMI condition SoftwareEmulation=True ({condition.reason}): {detail}")
    device = node.device
    if device is None or node.available is None:
        return Explanation(UNKNOWN, node.evidence)
    if node.available is False:
        return Explanation(node_without(device), node.evidence)
    if policy is None:
        return Explanation(not_requested(device), f"{node.evidence}; the domain is defined with type='qemu'")
    if launcher is not None:
        return _from_launcher(device, node, policy, launcher)
    if policy.allowed:
        return Explanation(not_requested(device), f"{node.evidence}; {policy.evidence}")
    if policy.allowed is None:
        return Explanation(UNKNOWN, f"{node.evidence}; {policy.evidence}")
    return Explanation(
        UNKNOWN,
        f"{node.evidence}; {policy.evidence}: emulation is not allowed now, so the VMI probably"
        " started while it was (a restart of the VMI should bring the device)",
    )


def _from_launcher(
    device: str, node: NodeAccelerator, policy: EmulationPolicy, launcher: LauncherRequest
) -> Explanation:
    """The node has the device and the launcher pod was read: its request decides."""
    if launcher.requested:
        # KubeVirt gives a launcher that got the device a domain of that type; TCG here is not
        # something the facts explain.
        return Explanation(UNKNOWN, f"{node.evidence}; {launcher.evidence}, yet the domain runs under TCG")
    if policy.allowed is False:
        note = "; emulation was allowed when it started and is not any more (a restart brings the device)"
        return Explanation(
            not_requested(device), f"{node.evidence}; {launcher.evidence}; {policy.evidence}{note}"
        )
    return Explanation(not_requested(device), f"{node.evidence}; {launcher.evidence}; {policy.evidence}")
