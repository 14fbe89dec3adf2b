"""The cluster facts that explain emulation, cached from list-watches like the VMIs.

Two small caches: this node's Node object (field selector ``metadata.name=<node>``) for its
allocatable hypervisor devices (``devices.kubevirt.io/kvm``, ``devices.kubevirt.io/mshv``), and the
KubeVirt CR (listed cluster-wide; there is one) for ``developerConfiguration.useEmulation`` and the
configured hypervisor (``hypervisors.py``), which says which of those devices counts. Nothing is
read per scrape: the caches change only on watch events, and ``version`` grows with every change of
the derived facts so a cached /metrics body can be invalidated. Without RBAC for either resource
everything else works; the reason is ``unknown`` and the evidence names the missing rule. Where the
agent may list pods, an emulated VMI's launcher pod is read once to confirm what it requested
(``launcher_pods.py``).

On a plain libvirt host ``HostFacts`` gives the same interface from the KVM device probe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from otel_vmi_hv.config import Settings
from otel_vmi_hv.emulation.hypervisors import Hypervisor, default_hypervisor, hypervisor_of
from otel_vmi_hv.emulation.kvm_device import KvmState, probe_kvm_device
from otel_vmi_hv.emulation.launcher_pods import LauncherPods
from otel_vmi_hv.emulation.reasons import (
    DEVICE_RESOURCE_PREFIX,
    EmulationPolicy,
    Explanation,
    NodeAccelerator,
    explain_emulation,
)
from otel_vmi_hv.model import VMI
from otel_vmi_hv.sources.kubernetes import api_client_for, list_watch_options
from otel_vmi_hv.sources.list_watch import ListWatch, Resource

log = logging.getLogger(__name__)

KVM_DEVICE = "kvm"
NODES = Resource("nodes")
KUBEVIRTS = Resource("kubevirts", "kubevirt.io", "v1")
USE_EMULATION = "spec.configuration.developerConfiguration.useEmulation"


def rbac_rule(resource: Resource) -> str:
    return f"the agent's ClusterRole needs get, list and watch on {resource.name}"


def node_device_from(node: Mapping[str, Any] | None, node_name: str, device: str | None) -> NodeAccelerator:
    """A device as virt-handler's device plugin advertises it: ``devices.kubevirt.io/<device>`` > 0."""
    if device is None:
        return NodeAccelerator(None, None, f"node {node_name}: no device to check for this hypervisor")
    if node is None:
        return NodeAccelerator(
            device, None, f"node {node_name} is not in the API (no Node object of that name)"
        )
    resource = f"{DEVICE_RESOURCE_PREFIX}{device}"
    status = node.get("status")
    allocatable = status.get("allocatable") if isinstance(status, Mapping) else None
    raw = allocatable.get(resource) if isinstance(allocatable, Mapping) else None
    if raw is None:
        return NodeAccelerator(device, False, f"node {node_name} has no allocatable {resource}")
    from kubernetes.utils import parse_quantity

    try:
        amount = parse_quantity(raw)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):
        return NodeAccelerator(
            device, None, f"node {node_name} allocatable {resource}={raw!r} is not a quantity"
        )
    return NodeAccelerator(device, amount > 0, f"node {node_name} allocatable {resource}={raw}")


def oldest(kubevirts: list[Mapping[str, Any]]) -> tuple[Mapping[str, Any], str]:
    """The cluster's KubeVirt CR (the oldest, should there be several) and its ``namespace/name``."""

    def created(obj: Mapping[str, Any]) -> str:
        metadata = obj.get("metadata")
        return str(metadata.get("creationTimestamp") or "") if isinstance(metadata, Mapping) else ""

    cr = min(kubevirts, key=created)
    metadata = cr.get("metadata")
    name = f"{metadata.get('namespace')}/{metadata.get('name')}" if isinstance(metadata, Mapping) else "?"
    return cr, name


def emulation_policy_from(kubevirts: list[Mapping[str, Any]]) -> EmulationPolicy:
    """``useEmulation`` of the cluster's KubeVirt CR (the oldest, should there be several)."""
    if not kubevirts:
        return EmulationPolicy(None, "no KubeVirt CR (kubevirts.kubevirt.io) in the cluster")
    cr, name = oldest(kubevirts)
    value: Any = cr
    for part in USE_EMULATION.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    allowed = value is True
    shown = "true" if allowed else ("false" if value is False else "unset (false)")
    verb = "allows" if allowed else "does not allow"
    return EmulationPolicy(allowed, f"KubeVirt CR {name} {verb} emulation ({USE_EMULATION}: {shown})")


class _Cache:
    """The objects of one list-watch, by uid; tells its owner after every change."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        self._objects: dict[str, Mapping[str, Any]] = {}
        self._listing: dict[str, Mapping[str, Any]] = {}
        self.synced = False
        self.failure: tuple[int | None, str] | None = None
        self.lock = threading.Lock()

    @staticmethod
    def _uid(obj: Mapping[str, Any]) -> str | None:
        metadata = obj.get("metadata")
        uid = metadata.get("uid") or metadata.get("name") if isinstance(metadata, Mapping) else None
        return uid if isinstance(uid, str) else None

    def objects(self) -> list[Mapping[str, Any]]:
        with self.lock:
            return list(self._objects.values())

    def relist_started(self) -> None:
        self._listing = {}

    def listed(self, obj: Mapping[str, Any]) -> None:
        uid = self._uid(obj)
        if uid is not None:
            self._listing[uid] = obj

    def relist_done(self) -> None:
        with self.lock:
            self._objects, self._listing = self._listing, {}
            self.synced, self.failure = True, None
        self._changed()

    def changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        uid = self._uid(obj)
        if uid is None:
            return
        with self.lock:
            if event_type == "DELETED":
                self._objects.pop(uid, None)
            else:
                self._objects[uid] = obj
        self._changed()

    def watching(self) -> None:
        """A watch stream opened: an earlier failure (a 403 since fixed) is over."""
        with self.lock:
            failure, self.failure = self.failure, None
        if failure is not None:
            self._changed()

    def failed(self, status: int | None, reason: str) -> None:
        with self.lock:
            self.failure = (status, reason)
        self._changed()


def _describe(accelerator: NodeAccelerator, why: str) -> str:
    state = {True: "present", False: "absent", None: "unknown"}[accelerator.available]
    return f"{accelerator.device or 'no known device'} {state} ({why})"


@dataclass(frozen=True, slots=True)
class _Derived:
    """What the two caches say, derived once per change."""

    kvm: NodeAccelerator  # the KVM device, whatever the hypervisor (otel_vmi_hv_node_kvm_available)
    accelerator: NodeAccelerator  # the configured hypervisor's device
    hypervisor: Hypervisor
    policy: EmulationPolicy


class ClusterFacts:
    """Node and KubeVirt CR facts for one node's agent, kept current by two list-watches."""

    def __init__(
        self,
        settings: Settings,
        *,
        api_client: Any = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._node_name = settings.node_name
        self._api_client = api_client
        self._on_change = on_change
        self._lock = threading.Lock()
        self._recompute_lock = threading.Lock()
        self._version = 0
        self._node = _Cache(self._recompute)
        self._kubevirt = _Cache(self._recompute)
        not_read = NodeAccelerator(KVM_DEVICE, None, f"node {self._node_name} not read yet")
        self._derived = _Derived(
            not_read,
            not_read,
            default_hypervisor("KubeVirt CR not read yet"),
            EmulationPolicy(None, "KubeVirt CR not read yet"),
        )
        self._launchers = LauncherPods(self._client, self._node_name, on_change=self._launcher_read)
        self._watches = [
            ListWatch(
                NODES,
                self._node,
                self._client,
                list_watch_options(settings, field_selector=f"metadata.name={self._node_name}"),
            ),
            ListWatch(
                KUBEVIRTS,
                self._kubevirt,
                self._client,
                list_watch_options(settings),
            ),
        ]

    def _client(self) -> Any:
        if self._api_client is None:
            self._api_client = api_client_for(self._settings)
        return self._api_client

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for watch in self._watches:
            watch.start(f"watch-{watch.resource.plural}")

    def stop(self) -> None:
        for watch in self._watches:
            watch.stop()
        self._launchers.stop()

    # ------------------------------------------------------------------ what the agent asks

    @property
    def version(self) -> int:
        """Grows whenever the node's devices, the hypervisor, the policy or a launcher's request is learnt."""
        with self._lock:
            return self._version

    def node_kvm(self) -> NodeAccelerator:
        with self._lock:
            return self._derived.kvm

    def node_accelerator(self) -> NodeAccelerator:
        """The configured hypervisor's device on this node (``kvm``, ``mshv``)."""
        with self._lock:
            return self._derived.accelerator

    def hypervisor(self) -> Hypervisor:
        with self._lock:
            return self._derived.hypervisor

    def emulation_policy(self) -> EmulationPolicy:
        with self._lock:
            return self._derived.policy

    def node_kvm_available(self) -> bool | None:
        return self.node_kvm().available

    def node_accelerator_available(self) -> tuple[str, bool] | None:
        """``(device, available)`` for the configured hypervisor's device; None while unknown."""
        accelerator = self.node_accelerator()
        if accelerator.device is None or accelerator.available is None:
            return None
        return accelerator.device, accelerator.available

    def describe_accelerator(self) -> str:
        """This node's accelerator in words, for `detect`: which device, whether present, and why."""
        with self._lock:
            derived = self._derived
        return _describe(
            derived.accelerator, f"{derived.hypervisor.evidence}; {derived.accelerator.evidence}"
        )

    def explain(self, vmi: VMI) -> tuple[str, str]:
        """``(reason, evidence)`` for a VMI reported ``qemu-tcg``; no I/O (a launcher is read later)."""
        with self._lock:
            derived = self._derived
        node = derived.accelerator
        launcher = None
        if vmi.software_emulation is None and node.available and node.device is not None:
            launcher = self._launchers.request(vmi, node.device)
        explanation: Explanation = explain_emulation(vmi.software_emulation, node, derived.policy, launcher)
        return explanation.reason, explanation.evidence

    def prepare(self, vmis: Iterable[VMI]) -> None:
        """Start reading what these VMIs' launchers request (``detect`` then waits for ``settled``)."""
        for vmi in vmis:
            self.explain(vmi)

    def settled(self) -> bool:
        """Both objects were listed (or their listing failed) and no launcher is being read (for `detect`)."""
        caches = (self._node, self._kubevirt)
        listed = all(cache.synced or cache.failure is not None for cache in caches)
        return listed and not self._launchers.pending()

    def problems(self) -> list[str]:
        """Facts that cannot be read, each with what would fix it (for `detect`)."""
        out = []
        for resource, cache in ((NODES, self._node), (KUBEVIRTS, self._kubevirt)):
            with cache.lock:
                failure = cache.failure
            if failure is not None:
                out.append(f"{resource.name}: {self._failure_text(resource, failure)}")
        return out

    # ------------------------------------------------------------------ derivation

    @staticmethod
    def _failure_text(resource: Resource, failure: tuple[int | None, str]) -> str:
        status, reason = failure
        if status == 403:
            return f"forbidden: {rbac_rule(resource)}"
        if status == 404:
            return f"not served by the API server ({resource.name} missing: is KubeVirt installed?)"
        return f"cannot be read: {reason}"

    @staticmethod
    def _readable(cache: _Cache) -> tuple[bool, tuple[int | None, str] | None]:
        """(listed, the failure that makes its objects unusable, if any)."""
        with cache.lock:
            synced, failure = cache.synced, cache.failure
        if failure is not None and (failure[0] in (401, 403, 404) or not synced):
            return synced, failure
        return synced, None

    def _node_facts(self, hypervisor: Hypervisor) -> tuple[NodeAccelerator, NodeAccelerator]:
        """(the KVM device, the hypervisor's device) on this node."""
        synced, failure = self._readable(self._node)
        if failure is not None or not synced:
            why = self._failure_text(NODES, failure) if failure is not None else "not read yet"
            sep = ": " if failure is not None else " "
            evidence = f"node {self._node_name}{sep}{why}"
            return NodeAccelerator(KVM_DEVICE, None, evidence), NodeAccelerator(
                hypervisor.device, None, evidence
            )
        nodes = [
            n
            for n in self._node.objects()
            if isinstance(n.get("metadata"), Mapping) and n["metadata"].get("name") == self._node_name
        ]
        node = nodes[0] if nodes else None
        kvm = node_device_from(node, self._node_name, KVM_DEVICE)
        if hypervisor.device == KVM_DEVICE:
            return kvm, kvm
        return kvm, node_device_from(node, self._node_name, hypervisor.device)

    def _cluster_facts(self) -> tuple[Hypervisor, EmulationPolicy]:
        synced, failure = self._readable(self._kubevirt)
        if failure is not None:
            why = f"KubeVirt CR {self._failure_text(KUBEVIRTS, failure)}"
            return default_hypervisor(f"hypervisor assumed ({why})"), EmulationPolicy(None, why)
        if not synced:
            return default_hypervisor("KubeVirt CR not read yet"), EmulationPolicy(
                None, "KubeVirt CR not read yet"
            )
        kubevirts = self._kubevirt.objects()
        if not kubevirts:
            hypervisor = default_hypervisor("no KubeVirt CR (kubevirts.kubevirt.io) in the cluster")
        else:
            hypervisor = hypervisor_of(*oldest(kubevirts))
        return hypervisor, emulation_policy_from(kubevirts)

    def _recompute(self) -> None:
        # Serialised: two watch threads deriving at once must not store an older result last.
        with self._recompute_lock:
            hypervisor, policy = self._cluster_facts()
            kvm, accelerator = self._node_facts(hypervisor)
            derived = _Derived(kvm, accelerator, hypervisor, policy)
            with self._lock:
                if derived == self._derived:
                    return
                self._derived = derived
                self._version += 1
        log.info("emulation facts: %s; %s; %s", hypervisor.evidence, accelerator.evidence, policy.evidence)
        self._on_change()

    def _launcher_read(self) -> None:
        """A launcher pod's request was learnt: explanations may differ now."""
        with self._lock:
            self._version += 1
        self._on_change()


class HostFacts:
    """The same interface on a plain libvirt host: the KVM device probe, re-run periodically."""

    def __init__(
        self,
        kvm_device: str,
        *,
        interval: float = 30.0,
        on_change: Callable[[], None] = lambda: None,
        probe: Callable[[str], KvmState] = probe_kvm_device,
    ) -> None:
        self._device = kvm_device
        self._interval = interval
        self._on_change = on_change
        self._probe = probe
        self._lock = threading.Lock()
        self._version = 0
        self._state = probe(kvm_device)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="kvm-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.refresh()

    def refresh(self) -> None:
        """Probe again (a module loaded or unloaded since); counts a change in ``version``."""
        state = self._probe(self._device)
        with self._lock:
            if state == self._state:
                return
            self._state = state
            self._version += 1
        log.info("KVM device: %s", state.detail)
        self._on_change()

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    def node_kvm_available(self) -> bool | None:
        with self._lock:
            return self._state.available

    def node_accelerator_available(self) -> tuple[str, bool] | None:
        """On a plain host the accelerator is KVM: the device probe's answer."""
        available = self.node_kvm_available()
        return None if available is None else (KVM_DEVICE, available)

    def explain(self, vmi: VMI) -> tuple[str, str]:
        with self._lock:
            state = self._state
        node = NodeAccelerator(KVM_DEVICE, state.available, state.detail)
        explanation = explain_emulation(vmi.software_emulation, node, None)
        return explanation.reason, explanation.evidence

    def describe_accelerator(self) -> str:
        with self._lock:
            state = self._state
        return _describe(NodeAccelerator(KVM_DEVICE, state.available, state.detail), state.detail)

    def prepare(self, vmis: Iterable[VMI]) -> None:
        """Nothing to read ahead on a plain host."""

    def settled(self) -> bool:
        return True  # probed at construction

    def problems(self) -> list[str]:
        with self._lock:
            state = self._state
        return [] if state.available is not None else [f"KVM device: {state.detail}"]


def emulation_facts_for(
    settings: Settings, *, on_change: Callable[[], None] = lambda: None, api_client: Any = None
) -> ClusterFacts | HostFacts:
    """The facts source matching the VMI source: the cluster's objects, or this host's KVM device.

    In a pod the agent cannot open the node's /dev/kvm (it is not privileged and gets no KVM device), so
    the probe is used only with the libvirt source.
    """
    if settings.source == "kubernetes":
        return ClusterFacts(settings, api_client=api_client, on_change=on_change)
    return HostFacts(settings.kvm_device, interval=settings.resync_interval, on_change=on_change)
