"""Which nodes the agent's pods land on, decided as the DaemonSet controller and the scheduler decide it,
compared with virt-handler's: the agent reports the VMIs virt-handler runs, so it belongs on the same nodes
and should be evicted no earlier.

virt-handler's pod spec is what virt-operator renders: ``NewHandlerDaemonSet`` builds its template with
``newPodTemplateSpec`` (pkg/virt-operator/resource/generate/components/daemonsets.go, deployments.go:
priority class ``kubevirt-cluster-critical``, the tolerations of ``criticalAddonsToleration()``), then
``syncDaemonSet`` merges the KubeVirt CR's ``spec.workloads`` into it with ``InjectPlacementMetadata``
(pkg/virt-operator/resource/placement/placement.go: ``kubernetes.io/os: linux`` unless the CR names that
label, the CR's other selectors where the template has none of that key, its affinity, its tolerations
appended). The DaemonSet controller then adds the tolerations every DaemonSet pod gets
(``AddOrUpdateDaemonPodTolerations`` in Kubernetes' pkg/controller/daemon/util/daemonset_util.go).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.kubernetes_manifests import (
    CUSTOM_KINDS,
    K8S_DIR,
    K8S_DOC,
    daemonset,
    kubernetes_schema_errors,
    kubernetes_versions,
    kustomize_build,
    yaml_blocks,
)

PROC_ONLY = K8S_DIR.parent / "kubernetes-variants" / "proc-only"
PRIORITY_CLASS = "kubevirt-cluster-critical"  # created by virt-operator in every KubeVirt installation

# virt-handler's template before the CR's placement is merged in.
VIRT_HANDLER_TEMPLATE: dict[str, Any] = {
    "priorityClassName": PRIORITY_CLASS,
    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
}

# Added by the DaemonSet controller to every DaemonSet pod (network-unavailable only with hostNetwork).
DAEMONSET_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]

LINUX = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}


def node(
    name: str, labels: Mapping[str, str] = LINUX, taints: tuple[dict[str, str], ...] = ()
) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": dict(labels)}, "spec": {"taints": list(taints)}}


def taint(key: str, effect: str = "NoSchedule", value: str = "") -> dict[str, str]:
    return {"key": key, "value": value, "effect": effect}


# The nodes of a KubeVirt cluster in the states that matter for placement.
CLUSTER = [
    node("worker", {**LINUX, "kubevirt.io/schedulable": "true"}),
    # virt-handler's heartbeat stopped: KubeVirt flips the label, the node's VMIs keep running.
    node("heartbeat-lost", {**LINUX, "kubevirt.io/schedulable": "false"}),
    node("not-labelled-yet", LINUX),  # virt-handler has not labelled it yet
    node("cordoned", LINUX, (taint("node.kubernetes.io/unschedulable"),)),
    node("not-ready", LINUX, (taint("node.kubernetes.io/not-ready", "NoExecute"),)),
    node("memory-pressure", LINUX, (taint("node.kubernetes.io/memory-pressure"),)),
    node("critical-addons-only", LINUX, (taint("CriticalAddonsOnly", value="true"),)),
    node("control-plane", LINUX, (taint("node-role.kubernetes.io/control-plane"),)),
    node("windows", {"kubernetes.io/os": "windows"}),
    node(
        "dedicated-vm-node",
        {**LINUX, "node-role.kubernetes.io/virt": ""},
        (taint("virt-only", value="true"),),
    ),
]


# ------------------------------------------------------------------------------ what the cluster does


def inject_placement(template: Mapping[str, Any], placement: Mapping[str, Any] | None) -> dict[str, Any]:
    """virt-handler's pod spec after virt-operator merged the CR's ``spec.workloads.nodePlacement``."""
    spec = copy.deepcopy(dict(template))
    placement = placement or {}
    selector = dict(placement.get("nodeSelector") or {})
    selector.setdefault("kubernetes.io/os", "linux")
    spec["nodeSelector"] = {**selector, **(spec.get("nodeSelector") or {})}
    if placement.get("affinity"):
        spec["affinity"] = copy.deepcopy(placement["affinity"])  # the template has none to merge with
    spec["tolerations"] = [*spec.get("tolerations", []), *(placement.get("tolerations") or [])]
    return spec


def _expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt"):
        if key not in labels:
            return False
        number, bound = int(labels[key]), int(values[0])
        return number > bound if operator == "Gt" else number < bound
    raise AssertionError(f"unknown node selector operator {operator!r}")


def _tolerates(toleration: Mapping[str, Any], node_taint: Mapping[str, str]) -> bool:
    if toleration.get("effect") and toleration["effect"] != node_taint["effect"]:
        return False
    operator = str(toleration.get("operator", "Equal"))
    if not toleration.get("key"):
        return operator == "Exists"  # an empty key with Exists tolerates every taint
    if toleration["key"] != node_taint["key"]:
        return False
    return operator == "Exists" or str(toleration.get("value", "")) == node_taint.get("value", "")


def runs_on(pod_spec: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
    """Whether a DaemonSet pod with ``pod_spec`` is placed on ``target`` (the controller's predicates)."""
    labels = target["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    required = (
        (pod_spec.get("affinity") or {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution")
    )
    if required and not any(
        all(_expression_matches(e, labels) for e in term.get("matchExpressions") or [])
        for term in required["nodeSelectorTerms"]
    ):
        return False
    tolerations = [*(pod_spec.get("tolerations") or []), *DAEMONSET_TOLERATIONS]
    return all(
        any(_tolerates(t, node_taint) for t in tolerations)
        for node_taint in target["spec"]["taints"]
        if node_taint["effect"] in ("NoSchedule", "NoExecute")
    )


def placed(pod_spec: Mapping[str, Any], nodes: list[dict[str, Any]]) -> set[str]:
    return {n["metadata"]["name"] for n in nodes if runs_on(pod_spec, n)}


def pod_spec_of(built: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = [doc for doc in built if doc["kind"] == "DaemonSet"]
    spec: dict[str, Any] = ds["spec"]["template"]["spec"]
    return spec


# ------------------------------------------------------------------------------------------- tests


def test_the_simulation_tells_nodes_apart() -> None:
    # Guards the comparisons below against a predicate that places everything (or nothing).
    handler = inject_placement(VIRT_HANDLER_TEMPLATE, None)
    assert placed(handler, CLUSTER) == {
        "worker",
        "heartbeat-lost",
        "not-labelled-yet",
        "cordoned",
        "not-ready",
        "memory-pressure",
        "critical-addons-only",
    }
    old_selector = {**handler, "nodeSelector": {"kubevirt.io/schedulable": "true"}}
    assert placed(old_selector, CLUSTER) == {"worker"}


def test_priority_class_is_virt_handlers() -> None:
    for spec in (daemonset()["spec"]["template"]["spec"], pod_spec_of(kustomize_build(PROC_ONLY))):
        assert spec.get("priorityClassName") == PRIORITY_CLASS


def test_the_agent_runs_wherever_virt_handler_runs_by_default() -> None:
    agent = daemonset()["spec"]["template"]["spec"]
    handler = inject_placement(VIRT_HANDLER_TEMPLATE, None)
    assert placed(agent, CLUSTER) == placed(handler, CLUSTER)
    # In particular where KubeVirt marked the node unschedulable for new VMIs: its VMIs still run.
    assert {"heartbeat-lost", "not-labelled-yet", "cordoned"} <= placed(agent, CLUSTER)
    for toleration in VIRT_HANDLER_TEMPLATE["tolerations"]:
        assert toleration in agent["tolerations"], "virt-handler's default tolerations"


def test_proc_only_variant_is_placed_like_the_base() -> None:
    base, proc_only = daemonset()["spec"]["template"]["spec"], pod_spec_of(kustomize_build(PROC_ONLY))
    for key in ("priorityClassName", "nodeSelector", "affinity", "tolerations"):
        assert proc_only.get(key) == base.get(key), key


def _doc_yaml(needle: str) -> dict[str, Any]:
    blocks = [b for b in yaml_blocks(K8S_DOC.read_text(encoding="utf-8")) if needle in b]
    assert len(blocks) == 1, f"one yaml block with {needle!r} in {K8S_DOC.name}"
    doc = yaml.safe_load(blocks[0])
    assert isinstance(doc, dict)
    return doc


def _with_placement_patch(tmp_path: Path, base: Path, patch: Mapping[str, Any]) -> list[dict[str, Any]]:
    overlay = tmp_path / base.name
    overlay.mkdir()
    (overlay / "placement.yaml").write_text(yaml.safe_dump(dict(patch)), encoding="utf-8")
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(base, overlay)],
        "patches": [{"path": "placement.yaml"}],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    return kustomize_build(overlay)


def test_doc_patch_places_the_agent_where_the_kubevirt_cr_places_virt_handler(tmp_path: Path) -> None:
    """docs/kubernetes.md shows a KubeVirt CR's node placement and the overlay patch copying it."""
    cr = _doc_yaml("kind: KubeVirt")
    placement = cr["spec"]["workloads"]["nodePlacement"]
    assert placement.get("nodeSelector") and placement.get("tolerations") and placement.get("affinity")
    patch = _doc_yaml("# deploy/otel-vmi-hv/placement.yaml")
    handler = inject_placement(VIRT_HANDLER_TEMPLATE, placement)
    # The CR's own nodes: labelled and tainted as its placement expects, and their near misses.
    labels = {**LINUX, **placement["nodeSelector"]}
    cluster = [
        *CLUSTER,
        node(
            "vm-node",
            labels,
            tuple(
                taint(t["key"], t.get("effect", "NoSchedule"), t.get("value", ""))
                for t in placement["tolerations"]
            ),
        ),
        node("vm-node-without-label", LINUX),
    ]
    for term in placement["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]:
        for expression in term.get("matchExpressions") or []:
            cluster.append(node(f"vm-node-{expression['key']}-absent", labels))
            values = expression.get("values") or ["x"]
            cluster.append(node(f"vm-node-{expression['key']}-set", {**labels, expression["key"]: values[0]}))
    for base in (K8S_DIR, PROC_ONLY):
        built = _with_placement_patch(tmp_path, base, patch)
        agent = pod_spec_of(built)
        assert placed(agent, cluster) == placed(handler, cluster), base.name
        assert "vm-node" in placed(agent, cluster)
        assert agent["priorityClassName"] == PRIORITY_CLASS
        for version in kubernetes_versions():
            for doc in built:
                if doc["kind"] not in CUSTOM_KINDS:
                    assert kubernetes_schema_errors(doc, version) is None
