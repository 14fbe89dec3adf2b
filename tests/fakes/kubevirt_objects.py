"""Real KubeVirt objects for tests, and small variants derived from them.

Why derive instead of hand-writing dicts: the agent must cope with what KubeVirt really emits (every field of
``vmi-running-ocp411-cat8kv-01.yaml`` is real cluster output), so variants start from a deep copy of that
object and change only the identity/placement fields a test cares about.  Everything else stays real.

Defaults are deterministic (uuid5 of the identity) so a failing test reproduces byte for byte, and
``make_vmi("default", "cat8kv-01", "kubevirt-nn4bm-worker-9fxdj")`` returns the fixture's own uid and pod uid,
so it still matches ``launcher-pod-ocp411-cat8kv-01.yaml`` and ``domain-ocp411-cat8kv-01.xml``.
"""

from __future__ import annotations

import functools
import json
import uuid
from pathlib import Path
from typing import Any, Final

import yaml

JsonObj = dict[str, Any]

FIXTURES_DIR: Final = Path(__file__).resolve().parent.parent / "fixtures" / "kubevirt"
BASE_VMI_FIXTURE: Final = "vmi-running-ocp411-cat8kv-01.yaml"

NODE: Final = "worker-1"  # the node the agent under test runs on, unless a test needs another
NODE_NAME_LABEL: Final = "kubevirt.io/nodeName"
# Set by virt-controller on the VMI while a migration target is being prepared, removed on hand-off
# (pkg/virt-controller/watch/migration.go; api/core/v1 MigrationTargetNodeNameLabel).
MIGRATION_TARGET_NODE_LABEL: Final = "kubevirt.io/migrationTargetNodeName"
DOMAIN_LABEL: Final = "kubevirt.io/domain"

_UID_NAMESPACE: Final = uuid.UUID("6f1c1a53-3f43-4f6b-9d4e-2b1f0b6c9a10")


@functools.cache
def _load_text(name: str) -> str:
    """Parse a fixture once and keep it as canonical JSON text; callers get fresh objects from it."""
    path = FIXTURES_DIR / name
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return json.dumps(data)


def load_fixture(name: str) -> Any:
    """Return a fresh (mutable, unshared) copy of a YAML or JSON fixture from ``tests/fixtures/kubevirt``."""
    return json.loads(_load_text(name))


def base_vmi() -> JsonObj:
    """Return a fresh copy of the real Running, non-root VMI ``default/cat8kv-01``."""
    obj: JsonObj = load_fixture(BASE_VMI_FIXTURE)
    return obj


def stable_uid(*parts: str) -> str:
    """A deterministic UUID for an identity, so derived objects are reproducible across runs."""
    return str(uuid.uuid5(_UID_NAMESPACE, "/".join(parts)))


def make_vmi(
    namespace: str,
    name: str,
    node: str | None,
    *,
    phase: str = "Running",
    runtime_user: int | None = 107,
    pod_uid: str | None = None,
    uid: str | None = None,
) -> JsonObj:
    """Derive a VMI from the real fixture, placed on ``node`` with one launcher pod.

    Changes metadata.name/namespace/uid, the ``kubevirt.io/nodeName`` and ``kubevirt.io/domain`` labels,
    spec.hostname, the owning VM's name, status.nodeName, status.phase, status.activePods ({pod_uid: node})
    and status.runtimeUser (``None`` removes it, as on pre-non-root KubeVirt).  ``node=None`` gives an
    unscheduled VMI (no node label, nodeName or activePods), as in phases Pending/Scheduling.
    metadata.resourceVersion is removed: the (fake) API server assigns it.
    """
    vmi = base_vmi()
    fixture_md, fixture_status = vmi["metadata"], vmi["status"]
    (fixture_pod_uid, fixture_node), *_ = fixture_status["activePods"].items()
    same_identity = (namespace, name) == (fixture_md["namespace"], fixture_md["name"])
    if uid is None:
        uid = fixture_md["uid"] if same_identity else stable_uid("vmi", namespace, name)
    if pod_uid is None and node is not None:
        same_pod = same_identity and node == fixture_node
        pod_uid = fixture_pod_uid if same_pod else stable_uid("pod", namespace, name, node)

    metadata = vmi["metadata"]
    metadata.pop("resourceVersion", None)
    metadata.update(name=name, namespace=namespace, uid=uid)
    labels = metadata.setdefault("labels", {})
    labels[DOMAIN_LABEL] = name
    for owner in metadata.get("ownerReferences", []):
        owner["name"] = name
    vmi["spec"]["hostname"] = name

    status = vmi["status"]
    status["phase"] = phase
    if node is None:
        labels.pop(NODE_NAME_LABEL, None)
        status.pop("nodeName", None)
        status.pop("activePods", None)
    else:
        assert pod_uid is not None
        labels[NODE_NAME_LABEL] = node
        status["nodeName"] = node
        status["activePods"] = {pod_uid: node}
    if runtime_user is None:
        status.pop("runtimeUser", None)
    else:
        status["runtimeUser"] = runtime_user
    return vmi


def make_migrating_vmi(
    namespace: str,
    name: str,
    source_node: str,
    target_node: str,
    *,
    completed: bool = False,
    source_pod_uid: str | None = None,
    target_pod_uid: str | None = None,
    migration_uid: str | None = None,
    runtime_user: int | None = 107,
    uid: str | None = None,
) -> JsonObj:
    """Derive a VMI in (or just after) a live migration: two launcher pods in status.activePods.

    While running (``completed=False``) the VMI still belongs to the source node (nodeName and the
    ``kubevirt.io/nodeName`` label) and carries ``kubevirt.io/migrationTargetNodeName=<target>``.  Once
    ``completed=True``, as KubeVirt does at hand-off, nodeName and the node label point at the target, the
    target-node label is gone and migrationState has ``completed``/``endTimestamp``; both pods stay in
    activePods until the source pod terminates.  Field names follow the real ``migrationState`` schema
    (tests/fixtures/kubevirt/vmi-status-schema-summary.json).
    """
    vmi = make_vmi(namespace, name, source_node, runtime_user=runtime_user, pod_uid=source_pod_uid, uid=uid)
    (source_pod_uid, _), *_ = vmi["status"]["activePods"].items()
    if target_pod_uid is None:
        target_pod_uid = stable_uid("pod", namespace, name, target_node)
    if migration_uid is None:
        migration_uid = stable_uid("migration", namespace, name, source_node, target_node)
    owner_node = target_node if completed else source_node
    labels = vmi["metadata"]["labels"]
    labels[NODE_NAME_LABEL] = owner_node
    if completed:
        labels.pop(MIGRATION_TARGET_NODE_LABEL, None)
    else:
        labels[MIGRATION_TARGET_NODE_LABEL] = target_node

    status = vmi["status"]
    status["nodeName"] = owner_node
    status["activePods"] = {source_pod_uid: source_node, target_pod_uid: target_node}
    status["migrationMethod"] = "LiveMigration"
    state: JsonObj = {
        "migrationUid": migration_uid,
        "sourceNode": source_node,
        "targetNode": target_node,
        "targetPod": f"virt-launcher-{name}-{target_pod_uid[:5]}",
        "targetNodeAddress": "10.128.0.46",
        "targetNodeDomainDetected": True,
        "mode": "PreCopy",
        "startTimestamp": "2023-03-27T15:00:00Z",
        "completed": completed,
    }
    if completed:
        state["endTimestamp"] = "2023-03-27T15:00:09Z"
    status["migrationState"] = state
    return vmi


KUBEVIRT_CR_FIXTURE: Final = "kubevirt-cr-use-emulation.yaml"
NODE_FIXTURE: Final = "node-SYNTHETIC-kubevirt-worker.yaml"
KVM_DEVICE_RESOURCE: Final = "devices.kubevirt.io/kvm"
MSHV_DEVICE_RESOURCE: Final = "devices.kubevirt.io/mshv"
LAUNCHER_POD_FIXTURE: Final = "launcher-pod-ocp411-cat8kv-01.yaml"
DEVICE_PREFIX: Final = "devices.kubevirt.io/"


def make_node(name: str, kvm: str | None, *, mshv: str | None = None) -> JsonObj:
    """The worker Node fixture renamed, with allocatable (and capacity) ``devices.kubevirt.io/kvm``
    set to ``kvm``, or removed when None (a node whose virt-handler found no /dev/kvm), and
    ``devices.kubevirt.io/mshv`` set to ``mshv`` when given (a Hyper-V node: /dev/mshv).
    """
    node: JsonObj = load_fixture(NODE_FIXTURE)
    node["metadata"]["name"] = name
    node["metadata"]["labels"]["kubernetes.io/hostname"] = name
    node["metadata"].pop("resourceVersion", None)
    node["metadata"]["uid"] = stable_uid("node", name)
    for section in ("allocatable", "capacity"):
        if kvm is None:
            node["status"][section].pop(KVM_DEVICE_RESOURCE, None)
        else:
            node["status"][section][KVM_DEVICE_RESOURCE] = kvm
        if mshv is not None:
            node["status"][section][MSHV_DEVICE_RESOURCE] = mshv
    return node


def make_kubevirt(
    use_emulation: bool | None, *, hypervisor: str | None = None, feature_gate: bool = True
) -> JsonObj:
    """The KubeVirt CR fixture with ``developerConfiguration.useEmulation`` set, or removed when None.

    ``hypervisor`` (``kvm``, ``hyperv-direct``) fills ``spec.configuration.hypervisors``, the field
    KubeVirt v1.8 added, and (unless ``feature_gate`` is False) enables the ``ConfigurableHypervisor``
    feature gate that makes KubeVirt honour it.
    """
    cr: JsonObj = load_fixture(KUBEVIRT_CR_FIXTURE)
    cr["metadata"].pop("resourceVersion", None)
    developer = cr["spec"]["configuration"]["developerConfiguration"]
    if use_emulation is None:
        developer.pop("useEmulation", None)
    else:
        developer["useEmulation"] = use_emulation
    if hypervisor is not None:
        cr["spec"]["configuration"]["hypervisors"] = [{"name": hypervisor}]
        if feature_gate:
            developer.setdefault("featureGates", []).append("ConfigurableHypervisor")
    return cr


def make_launcher_pod(vmi: JsonObj, node: str, *, device: str | None = "kvm") -> JsonObj:
    """The real launcher pod fixture turned into the launcher of ``vmi`` on ``node``.

    Its name, namespace, uid (the key of the VMI's ``status.activePods`` for ``node``), node and the
    labels and owner reference naming the VMI follow ``vmi``. ``device`` is the hypervisor device its
    compute container requests (``kvm``, ``mshv``), or None for a launcher that requests none, as
    KubeVirt renders it when ``useEmulation`` is true.
    """
    pod: JsonObj = load_fixture(LAUNCHER_POD_FIXTURE)
    metadata, vmi_md = pod["metadata"], vmi["metadata"]
    pod_uid = next(uid for uid, pod_node in vmi["status"]["activePods"].items() if pod_node == node)
    suffix = stable_uid("launcher", pod_uid)[:5]
    metadata.pop("resourceVersion", None)
    metadata.update(
        name=f"virt-launcher-{vmi_md['name']}-{suffix}",
        generateName=f"virt-launcher-{vmi_md['name']}-",
        namespace=vmi_md["namespace"],
        uid=pod_uid,
    )
    metadata["labels"].update({"kubevirt.io/created-by": vmi_md["uid"], "kubevirt.io/domain": vmi_md["name"]})
    for owner in metadata["ownerReferences"]:
        owner.update(name=vmi_md["name"], uid=vmi_md["uid"])
    pod["spec"]["nodeName"] = node
    for container in pod["spec"]["containers"]:
        for section in ("limits", "requests"):
            amounts = container.get("resources", {}).get(section)
            if not amounts or KVM_DEVICE_RESOURCE not in amounts:
                continue
            quantity = amounts.pop(KVM_DEVICE_RESOURCE)
            if device is not None:
                amounts[f"{DEVICE_PREFIX}{device}"] = quantity
    return pod


def with_software_emulation(vmi: JsonObj, host: str = "amd64", guest: str = "arm64") -> JsonObj:
    """Add virt-handler's condition for a cross-architecture guest (reason CrossArchitectureEmulation)."""
    vmi["status"].setdefault("conditions", []).append(
        {
            "type": "SoftwareEmulation",
            "status": "True",
            "reason": "CrossArchitectureEmulation",
            "message": f"VM running with software emulation (host={host}, guest={guest})",
            "lastProbeTime": None,
            "lastTransitionTime": "2025-03-04T10:00:00Z",
        }
    )
    return vmi
