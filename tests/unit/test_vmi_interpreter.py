"""How a VMI object becomes a libvirt target: launcher pod, libvirt mode, URI template, file fallback."""

from __future__ import annotations

from otel_vmi_hv.config import KUBEVIRT_LIBVIRT_URI
from otel_vmi_hv.sources.kubernetes import VMIInterpreter
from tests.fakes.kubevirt_objects import load_fixture, make_migrating_vmi, make_vmi

EMPTY_DIR = "/pods/{pod}/volumes/kubernetes.io~empty-dir"


def test_real_non_root_vmi_maps_to_its_launcher_socket_in_session_mode() -> None:
    vmi = load_fixture("vmi-running-ocp411-cat8kv-01.yaml")
    node = vmi["status"]["nodeName"]
    (pod,) = vmi["status"]["activePods"]
    target = VMIInterpreter(node, KUBEVIRT_LIBVIRT_URI, "/pods")(vmi)
    assert target is not None
    assert (target.namespace, target.name, target.key) == ("default", "cat8kv-01", vmi["metadata"]["uid"])
    base = EMPTY_DIR.format(pod=pod)
    assert target.target.uri == f"qemu+unix:///session?socket={base}/libvirt-runtime/virtqemud-sock"
    assert target.target.domain_name == "default_cat8kv-01"
    assert target.target.domain_file == f"{base}/private/libvirt/qemu/default_cat8kv-01.xml"
    assert target.target.lifetime_key == pod


def test_root_launcher_era_uses_system_mode() -> None:
    vmi = load_fixture("vmi-running-upstream-v0.49-testvm.yaml")  # no status.runtimeUser
    target = VMIInterpreter(vmi["status"]["nodeName"], KUBEVIRT_LIBVIRT_URI, "/pods")(vmi)
    assert target is not None and target.target.uri.startswith("qemu+unix:///system?socket=/pods/")
    explicit_root = make_vmi("ns", "vm", "n1", runtime_user=0)
    target = VMIInterpreter("n1", KUBEVIRT_LIBVIRT_URI, "/pods")(explicit_root)
    assert target is not None and "/system?" in target.target.uri


def test_template_placeholders_are_filled() -> None:
    vmi = make_vmi("team-a", "db", "n1", pod_uid="p-1", uid="u-1")
    template = "qemu+unix:///{mode}?socket=/run/{namespace}/{name}/{vmi_uid}/{pod_uid}.sock&root={pods_root}"
    target = VMIInterpreter("n1", template, "/host/pods/")(vmi)
    assert target is not None
    assert target.target.uri == "qemu+unix:///session?socket=/run/team-a/db/u-1/p-1.sock&root=/host/pods"


def test_during_migration_each_node_picks_its_own_launcher() -> None:
    done = make_migrating_vmi(
        "ns", "vm", "src", "dst", completed=True, source_pod_uid="pod-src", target_pod_uid="pod-dst"
    )
    on_target = VMIInterpreter("dst", KUBEVIRT_LIBVIRT_URI, "/pods")(done)
    assert on_target is not None and "/pods/pod-dst/" in on_target.target.uri
    assert VMIInterpreter("src", KUBEVIRT_LIBVIRT_URI, "/pods")(done) is None, "nodeName moved: source stops"
    running = make_migrating_vmi("ns", "vm", "src", "dst", source_pod_uid="pod-src", target_pod_uid="pod-dst")
    on_source = VMIInterpreter("src", KUBEVIRT_LIBVIRT_URI, "/pods")(running)
    assert on_source is not None and "/pods/pod-src/" in on_source.target.uri
    assert VMIInterpreter("dst", KUBEVIRT_LIBVIRT_URI, "/pods")(running) is None


def test_a_pod_uid_that_would_escape_the_pods_root_is_ignored() -> None:
    vmi = make_vmi("ns", "vm", "n1")
    vmi["status"]["activePods"] = {"../../etc": "n1", "a/b": "n1"}
    target = VMIInterpreter("n1", KUBEVIRT_LIBVIRT_URI, "/pods")(vmi)
    assert target is not None and target.target.uri == "", "reported, but as having no launcher pod"
