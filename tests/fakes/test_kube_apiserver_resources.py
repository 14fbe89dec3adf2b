"""The fake API server's Nodes, KubeVirt CRs, 403s and watch-cache list semantics, through the real client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.fakes.kube_apiserver import CACHED_LIST, CONSISTENT_LIST, FakeKubeAPIServer
from tests.fakes.kubevirt_objects import make_kubevirt, make_launcher_pod, make_node, make_vmi


def core_api(kube: Any) -> Any:
    return client.CoreV1Api(kube)


def custom_api(kube: Any) -> Any:
    return client.CustomObjectsApi(kube)


@pytest.fixture
def kube(api: FakeKubeAPIServer, tmp_path: Path) -> Any:
    return config.new_client_from_config(config_file=str(api.write_kubeconfig(tmp_path / "kubeconfig")))


def test_nodes_by_field_selector(api: FakeKubeAPIServer, kube: Any) -> None:
    for name in ("worker-1", "worker-2"):
        api.create(make_node(name, "1k"))
    api.create(make_vmi("default", "vm", "worker-1"))  # other resources never leak into a node list
    nodes = core_api(kube).list_node(field_selector="metadata.name=worker-2")
    assert [n.metadata.name for n in nodes.items] == ["worker-2"]
    assert nodes.items[0].status.allocatable["devices.kubevirt.io/kvm"] == "1k"
    assert nodes.items[0].metadata.namespace is None


def test_kubevirt_cr_listed_cluster_wide_and_read_by_name(api: FakeKubeAPIServer, kube: Any) -> None:
    api.create(make_kubevirt(True))
    custom = custom_api(kube)
    listed = custom.list_cluster_custom_object("kubevirt.io", "v1", "kubevirts")
    assert listed["kind"] == "KubeVirtList"
    [cr] = listed["items"]
    assert cr["spec"]["configuration"]["developerConfiguration"]["useEmulation"] is True
    got = custom.get_namespaced_custom_object("kubevirt.io", "v1", "kubevirt", "kubevirts", "kubevirt")
    assert got["metadata"]["uid"] == cr["metadata"]["uid"]


def test_node_watch_sees_a_patch(api: FakeKubeAPIServer, kube: Any) -> None:
    api.create(make_node("worker-1", None))
    version = core_api(kube).list_node(resource_version="0").metadata.resource_version

    def add_kvm(node: dict[str, Any]) -> None:
        node["status"]["allocatable"]["devices.kubevirt.io/kvm"] = "1k"

    api.patch("", "worker-1", add_kvm, kind="Node")
    response = core_api(kube).list_node(
        watch=True, resource_version=version, timeout_seconds=1, _preload_content=False
    )
    events = [json.loads(line) for line in response.data.splitlines() if line.strip()]
    assert [e["type"] for e in events] == ["MODIFIED"]
    assert events[0]["object"]["status"]["allocatable"]["devices.kubevirt.io/kvm"] == "1k"


def test_forbidden_resource(api: FakeKubeAPIServer, kube: Any) -> None:
    api.forbid("nodes")
    with pytest.raises(ApiException) as raised:
        core_api(kube).list_node()
    assert raised.value.status == 403
    body = json.loads(raised.value.body or "{}")
    assert body["reason"] == "Forbidden"
    assert 'cannot list resource "nodes" in API group "" at the cluster scope' in body["message"]
    assert custom_api(kube).list_cluster_custom_object("kubevirt.io", "v1", "kubevirts")
    api.allow("nodes")
    assert core_api(kube).list_node().items == []


def test_what_each_list_costs(api: FakeKubeAPIServer, kube: Any) -> None:
    for index in range(5):
        api.create(make_node(f"worker-{index}", "1k"))
    core: Any = core_api(kube)
    cached = core.list_node(resource_version="0", limit=2)
    assert len(cached.items) == 5 and not cached.metadata._continue, "the watch cache ignores limit"
    version = cached.metadata.resource_version
    assert len(core.list_node(resource_version=version, resource_version_match="NotOlderThan").items) == 5
    from_etcd = core.list_node(resource_version=version, resource_version_match="NotOlderThan", limit=2)
    assert len(from_etcd.items) == 2 and from_etcd.metadata._continue, "with a limit, etcd pages it"
    core.list_node(_continue=from_etcd.metadata._continue, limit=2)
    core.list_node()
    kinds = [r.kind for r in api.requests if r.verb == "list"]
    assert kinds == [CACHED_LIST, CACHED_LIST, CONSISTENT_LIST, CONSISTENT_LIST, CONSISTENT_LIST]
    assert api.request_kinds("nodes") == {CACHED_LIST: 2, CONSISTENT_LIST: 3}


def test_restart_expires_old_watch_positions(api: FakeKubeAPIServer, kube: Any) -> None:
    api.create(make_node("worker-1", "1k"))
    version = core_api(kube).list_node().metadata.resource_version
    api.stop()
    api.create(make_node("worker-2", "1k"))
    api.restart()
    response = core_api(kube).list_node(
        watch=True, resource_version=version, timeout_seconds=1, _preload_content=False
    )
    [event] = [json.loads(line) for line in response.data.splitlines() if line.strip()]
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
    assert [n["metadata"]["name"] for n in api.objects(kind="Node")] == ["worker-1", "worker-2"]


def test_pods_by_namespace_label_and_node(api: FakeKubeAPIServer, kube: Any) -> None:
    mine, other = make_vmi("ci", "runner", "worker-1"), make_vmi("ci", "other", "worker-2")
    api.create(make_launcher_pod(mine, "worker-1"))
    api.create(make_launcher_pod(other, "worker-2"))
    pods = core_api(kube).list_namespaced_pod(
        "ci",
        label_selector=f"kubevirt.io/created-by={mine['metadata']['uid']}",
        field_selector="spec.nodeName=worker-1",
        resource_version="0",
    )
    assert [p.metadata.uid for p in pods.items] == list(mine["status"]["activePods"])
    assert core_api(kube).list_namespaced_pod("ci", field_selector="spec.nodeName=worker-3").items == []
    assert core_api(kube).list_namespaced_pod("other").items == []
    api.forbid("pods")
    with pytest.raises(ApiException) as refused:
        core_api(kube).list_namespaced_pod("ci")
    message = json.loads(refused.value.body or "{}")["message"]
    assert refused.value.status == 403 and 'cannot list resource "pods"' in message
