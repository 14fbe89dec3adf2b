"""Emulation facts on a plain libvirt host: the KVM device probe, re-run every resync interval.

In a pod the agent cannot open the node's /dev/kvm (it is not privileged and gets no KVM device),
so the probe serves only the libvirt source; a cluster's facts come from ``cluster_facts.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from otel_vmi_hv.emulation.explained import KVM_DEVICE, ExplainedFacts, Reading, describe
from otel_vmi_hv.emulation.kvm_device import KvmState, probe_kvm_device
from otel_vmi_hv.emulation.reasons import NodeAccelerator


class HostFacts(ExplainedFacts):
    """This host's KVM device, probed at construction and then every ``interval`` seconds."""

    def __init__(
        self,
        kvm_device: str,
        *,
        interval: float,
        probe: Callable[[str], KvmState] = probe_kvm_device,
    ) -> None:
        super().__init__("kvm-probe", poll_interval=interval)
        self._device = kvm_device
        self._probe = probe
        self._state = probe(kvm_device)
        self.publish()

    def _poll(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Probe again (a module loaded or unloaded since) and publish what changed."""
        self._state = self._probe(self._device)
        self.publish()

    def _read(self) -> Reading:
        state = self._state
        node = NodeAccelerator(KVM_DEVICE, state.available, state.detail)
        return Reading(node, node, describe(node, state.detail), None)

    def problems(self) -> list[str]:
        state = self._state
        return [] if state.available is not None else [f"KVM device: {state.detail}"]
