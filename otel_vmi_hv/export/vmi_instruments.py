"""The per-VMI instruments and the node facts beside them, one named callback per instrument.

Each callback reads what other threads prepared (the tracker's snapshot, the libvirt connection
states, the cached emulation facts) and does no I/O: the SDK runs callbacks under one lock and
cannot interrupt them, so I/O here would stall every scrape and export.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from otel_vmi_hv.export.sdk_state import AttributeStatePruner
from otel_vmi_hv.interfaces import ConnectionStates, EmulationFacts, Snapshots
from otel_vmi_hv.model import ConnectionState

INFO_METRIC = "kubevirt_vmi_hypervisor_info"
INFO_HELP = "Information about the hypervisor type used by a VirtualMachineInstance"


class VmiInstruments:
    """Turns the latest snapshot and facts into observations; registered once, at start."""

    def __init__(
        self,
        snapshots: Snapshots,
        connections: ConnectionStates,
        facts: EmulationFacts,
        pruner: AttributeStatePruner,
    ) -> None:
        self._snapshots = snapshots
        self._connections = connections
        self._facts = facts
        self._pruner = pruner
        self._info: tuple[int, list[Observation]] = (-1, [])  # (snapshot version, observations)

    def register(self, meter: Any) -> None:
        meter.create_observable_gauge(
            INFO_METRIC, callbacks=[self.observe_info], unit="", description=INFO_HELP
        )
        meter.create_observable_gauge(
            "otel_vmi_hv_vmi_emulation_info",
            callbacks=[self.observe_emulation],
            unit="",
            description="Why a VMI runs under QEMU TCG software emulation (reason: cross_arch, "
            "node_without_<device>, <device>_not_requested with device kvm or mshv, unknown); "
            "1 for emulated VMIs only",
        )
        meter.create_observable_gauge(
            "otel_vmi_hv_node_kvm_available",
            callbacks=[self.observe_node_kvm],
            unit="",
            description="1 when this node offers KVM to VMIs, 0 when it does not; absent while unknown",
        )
        meter.create_observable_gauge(
            "otel_vmi_hv_node_accelerator_available",
            callbacks=[self.observe_node_accelerator],
            unit="",
            description="1 when this node offers the device of the cluster's hypervisor to VMIs "
            "(device: kvm, mshv), 0 when it does not; absent while unknown",
        )
        meter.create_observable_gauge(
            "otel_vmi_hv_vmis",
            callbacks=[self.observe_vmis],
            unit="{vmi}",
            description="VMIs on this node being reported, by detection state (detected, unknown, pending)",
        )
        meter.create_observable_gauge(
            "otel_vmi_hv_libvirt_connections",
            callbacks=[self.observe_connections],
            unit="{daemon}",
            description="libvirt daemons known to the agent, by connection state "
            "(idle, connected, disconnected, hung)",
        )

    def observe_info(self, _options: CallbackOptions) -> Iterable[Observation]:
        """One point per reported VMI; the list is rebuilt only when the snapshot changed."""
        snapshot = self._snapshots.snapshot()
        if self._info[0] != snapshot.version:
            self._info = (snapshot.version, [Observation(1, row.attributes()) for row in snapshot.series])
        self._pruner.prune_if_bloated(len(self._info[1]))
        return self._info[1]

    def observe_emulation(self, _options: CallbackOptions) -> Iterable[Observation]:
        """The emulated VMIs the facts have explained (computed ahead; a VMI not explained yet waits)."""
        explanations = self._facts.explanations()
        observations = []
        for row, vmi in self._snapshots.snapshot().emulated:
            explained = explanations.get(vmi.key)
            if explained is not None:
                attributes = {"namespace": row.namespace, "name": row.name, "node": row.node}
                observations.append(Observation(1, {**attributes, "reason": explained[0]}))
        return observations

    def observe_node_kvm(self, _options: CallbackOptions) -> Iterable[Observation]:
        available = self._facts.node_kvm_available()
        return [] if available is None else [Observation(int(available))]

    def observe_node_accelerator(self, _options: CallbackOptions) -> Iterable[Observation]:
        accelerator = self._facts.node_accelerator_available()
        if accelerator is None:
            return []
        device, available = accelerator
        return [Observation(int(available), {"device": device})]

    def observe_vmis(self, _options: CallbackOptions) -> Iterable[Observation]:
        snapshot = self._snapshots.snapshot()
        return [
            Observation(len(snapshot.series) - snapshot.unknown, {"state": "detected"}),
            Observation(snapshot.unknown, {"state": "unknown"}),
            Observation(snapshot.pending, {"state": "pending"}),
        ]

    def observe_connections(self, _options: CallbackOptions) -> Iterable[Observation]:
        counts: dict[str, int] = {state.value: 0 for state in ConnectionState}
        for state in self._connections.states().values():
            counts[state] = counts.get(state, 0) + 1
        return [Observation(count, {"state": state}) for state, count in counts.items()]
