"""Which hypervisor a KubeVirt cluster runs VMIs with, and so which node device accelerates them.

KubeVirt v1.8 added a hypervisor abstraction behind the feature gate ``ConfigurableHypervisor``: the
KubeVirt CR's ``spec.configuration.hypervisors`` (KubeVirtConfiguration.Hypervisors, a list of
HypervisorConfiguration whose ``name`` is ``kvm`` or ``hyperv-direct``, in
staging/src/kubevirt.io/api/core/v1/types.go) selects it. KubeVirt honours only the first entry, and
only with the gate enabled; otherwise, and on older releases without the field, it is KVM. Each
backend names the device its launchers request and virt-handler's device plugin advertises as
``devices.kubevirt.io/<device>`` (pkg/hypervisor/kvm and pkg/hypervisor/mshv, GetHypervisorDevice):
``kvm`` for KVM, ``mshv`` for hyperv-direct, whose domains have libvirt type ``hyperv``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from otel_vmi_hv.fields import items, mapping, text

DEFAULT_HYPERVISOR = "kvm"
FEATURE_GATE = "ConfigurableHypervisor"
# KubeVirt's hypervisor names and the device each one's launchers request.
DEVICES = {"kvm": "kvm", "hyperv-direct": "mshv"}


@dataclass(frozen=True, slots=True)
class Hypervisor:
    """The cluster's hypervisor: its KubeVirt name, its device (None when unknown here), and why."""

    name: str
    device: str | None
    evidence: str


def hypervisor_of(cr: Mapping[str, Any], cr_name: str) -> Hypervisor:
    """The hypervisor KubeVirt uses according to the CR ``cr_name`` (``namespace/name``)."""
    configuration = mapping(cr, "spec", "configuration")
    named, where = text(configuration, "hypervisors", 0, "name"), f"KubeVirt CR {cr_name}"
    if not named:
        return default_hypervisor(f"{where} names no hypervisor (spec.configuration.hypervisors)")
    if FEATURE_GATE not in items(configuration, "developerConfiguration", "featureGates"):
        return default_hypervisor(
            f"{where} names hypervisor {named!r} but the feature gate {FEATURE_GATE} is off"
        )
    if named not in DEVICES:
        return Hypervisor(
            named, None, f"{where} configures hypervisor {named!r}, whose device is not known here"
        )
    return Hypervisor(named, DEVICES[named], f"{where} configures hypervisor {named}")


def default_hypervisor(why: str) -> Hypervisor:
    """KVM, KubeVirt's default, with the reason it applies (or is assumed)."""
    return Hypervisor(DEFAULT_HYPERVISOR, DEVICES[DEFAULT_HYPERVISOR], f"{why}: KVM")
