"""The cluster facts that explain emulation, cached from list-watches like the VMIs.

This node's Node (field selector ``metadata.name=<node>``) for its allocatable hypervisor devices,
and the KubeVirt CR for ``useEmulation`` and the configured hypervisor (``hypervisors.py``), which
says which device counts. Nothing is read per scrape: a watch event only wakes the worker of
``explained.py``. Without RBAC for either resource everything else works; the reason is ``unknown``
and the evidence names the missing rule. Where the agent may list pods, an emulated VMI's launcher
pod is read once to confirm what it requested (``launcher_pods.py``).
"""

from __future__ import annotations

from typing import Any

from otel_vmi_hv.config import Settings
from otel_vmi_hv.emulation.cluster_objects import (
    KUBEVIRTS,
    NODES,
    ObjectCache,
    emulation_policy_from,
    failure_text,
    node_device_from,
    oldest,
)
from otel_vmi_hv.emulation.explained import KVM_DEVICE, ExplainedFacts, Reading, describe
from otel_vmi_hv.emulation.host_facts import HostFacts
from otel_vmi_hv.emulation.hypervisors import Hypervisor, default_hypervisor, hypervisor_of
from otel_vmi_hv.emulation.launcher_pods import LauncherPods
from otel_vmi_hv.emulation.reasons import EmulationPolicy, LauncherRequest, NodeAccelerator
from otel_vmi_hv.fields import text
from otel_vmi_hv.interfaces import Recorder
from otel_vmi_hv.model import VMI
from otel_vmi_hv.sources.kubernetes import api_client_for, list_watch_options
from otel_vmi_hv.sources.list_watch import ListWatch

LOOKUP_RETRY_CHECK = 10.0  # seconds; launcher lookups are retried after 30 s or more


class _HandlerErrors(Recorder):
    """Passes on a watch handler's bugs, nothing else."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def record_handler_error(self) -> None:
        self._recorder.record_handler_error()


class ClusterFacts(ExplainedFacts):
    """Node and KubeVirt CR facts for one node's agent, kept current by two list-watches."""

    def __init__(self, settings: Settings, recorder: Recorder | None = None) -> None:
        # The poll asks again, when due, what a launcher lookup could not answer.
        super().__init__("emulation-facts", poll_interval=LOOKUP_RETRY_CHECK)
        self._settings = settings
        self._node_name = settings.node_name
        self._api_client: Any = None  # made on first use
        self._node = ObjectCache(self.wake)
        self._kubevirt = ObjectCache(self.wake)
        self._launchers = LauncherPods(self.client, self._node_name, on_answer=self.wake)
        this_node = list_watch_options(settings, field_selector=f"metadata.name={self._node_name}")
        bugs = _HandlerErrors(recorder or Recorder())  # their restarts are not the VMI watch's
        self._watches = [
            ListWatch(NODES, self._node, self.client, this_node, bugs),
            ListWatch(KUBEVIRTS, self._kubevirt, self.client, list_watch_options(settings), bugs),
        ]
        self.publish()

    def client(self) -> Any:
        """The API client, made on first use (the Events writer shares it)."""
        if self._api_client is None:
            self._api_client = api_client_for(self._settings)
        return self._api_client

    def start(self) -> None:
        for watch in self._watches:
            watch.start(f"watch-{watch.resource.plural}")
        self._launchers.start()
        super().start()

    def stop(self) -> None:
        for watch in self._watches:
            watch.stop()
        self._launchers.stop()
        super().stop()

    def problems(self) -> list[str]:
        """Facts that cannot be read, each with what would fix it (for `detect`)."""
        out = []
        for resource, cache in ((NODES, self._node), (KUBEVIRTS, self._kubevirt)):
            failure = cache.failure
            if failure is not None:
                out.append(f"{resource.name}: {failure_text(resource, failure)}")
        return out

    # ------------------------------------------------------------------ derivation (on the worker)

    def _inputs_settled(self) -> bool:
        listed = all(cache.synced or cache.failure is not None for cache in (self._node, self._kubevirt))
        return listed and not self._launchers.pending()

    def _launcher(self, vmi: VMI, device: str) -> LauncherRequest | None:
        return self._launchers.request(vmi, device)

    def _read(self) -> Reading:
        hypervisor, policy = self._cluster()
        kvm, accelerator = self._node_devices(hypervisor)
        return Reading(
            kvm, accelerator, describe(accelerator, f"{hypervisor.evidence}; {accelerator.evidence}"), policy
        )

    def _node_devices(self, hypervisor: Hypervisor) -> tuple[NodeAccelerator, NodeAccelerator]:
        """(the KVM device, the hypervisor's device) on this node."""
        synced, failure = self._node.state()
        if failure is not None or not synced:
            why = f": {failure_text(NODES, failure)}" if failure is not None else " not read yet"
            evidence = f"node {self._node_name}{why}"
            unknown = NodeAccelerator(hypervisor.device, None, evidence)
            return NodeAccelerator(KVM_DEVICE, None, evidence), unknown
        node = next((n for n in self._node.objects() if text(n, "metadata", "name") == self._node_name), None)
        kvm = node_device_from(node, self._node_name, KVM_DEVICE)
        same = hypervisor.device == KVM_DEVICE
        return kvm, kvm if same else node_device_from(node, self._node_name, hypervisor.device)

    def _cluster(self) -> tuple[Hypervisor, EmulationPolicy]:
        synced, failure = self._kubevirt.state()
        if failure is not None:
            why = f"KubeVirt CR {failure_text(KUBEVIRTS, failure)}"
            return default_hypervisor(f"hypervisor assumed ({why})"), EmulationPolicy(None, why)
        if not synced:
            why = "KubeVirt CR not read yet"
            return default_hypervisor(why), EmulationPolicy(None, why)
        kubevirts = self._kubevirt.objects()
        policy = emulation_policy_from(kubevirts)
        if not kubevirts:
            return default_hypervisor(policy.evidence), policy
        return hypervisor_of(*oldest(kubevirts)), policy


def emulation_facts_for(settings: Settings, recorder: Recorder) -> ClusterFacts | HostFacts:
    """The facts matching the VMI source: the cluster's objects, or this host's KVM device."""
    if settings.source == "kubernetes":
        return ClusterFacts(settings, recorder)
    return HostFacts(settings.kvm_device, interval=settings.resync_interval)
