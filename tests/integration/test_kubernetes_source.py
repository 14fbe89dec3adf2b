"""The Kubernetes source against a protocol-faithful fake API server, through the real client.

VMIs are the real fixtures (or variants derived from them); each launcher pod has its own libvirt
test-driver URI, as each KubeVirt launcher has its own virtqemud.
"""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path

import pytest

from tests.agent_process import AgentProcess, http_get, wait_until
from tests.conftest import FIXTURES
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import load_fixture, make_migrating_vmi, make_vmi
from tests.integration.kube_env import (
    TEST_DRIVER_TEMPLATE,
    Launchers,
    node_labels,
    running_agent,
    samples,
    series,
    vmi_states,
)

NODE_A, NODE_B = "node-a", "node-b"
AGENT_WATCHES = 3  # the node's VMIs, its Node and the KubeVirt CR (why emulated VMIs are)


def vmi_lists(api: FakeKubeAPIServer) -> int:
    """List requests for VMIs (the agent also lists its Node and the KubeVirt CR)."""
    return sum(1 for r in api.requests if r.verb == "list" and r.resource == "virtualmachineinstances")


@pytest.fixture
def pods_root(tmp_path: Path) -> Path:
    root = tmp_path / "pods"
    root.mkdir()
    return root


@pytest.fixture
def launchers(pods_root: Path) -> Launchers:
    return Launchers(pods_root)


BARRIER_NS = "barrier"


def _barrier(api, launchers, agent, node: str, name: str) -> None:
    """Create a running VMI and wait until ``agent`` reports it, then until nothing is pending.

    The watch delivers events in order, so once this VMI shows, every change made before it has
    reached the agent, and a detection it started has finished: what is absent now stays absent.
    """
    vmi = make_vmi(BARRIER_NS, name, node)
    launchers.run_vmi(vmi, "kvm", node)
    api.create(vmi)
    wait_until(lambda: (BARRIER_NS, name) in series(agent), 10, f"the barrier VMI {name} on {node}")
    wait_until(lambda: vmi_states(agent).get("pending") == 0, 10, "no detection pending")


def _tenants(found: dict[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    """The series without the barrier VMIs."""
    return {key: value for key, value in found.items() if key[0] != BARRIER_NS}


def test_initial_sync_reports_only_running_vmis_of_this_node(api, tmp_path, pods_root, launchers) -> None:
    for name, node, phase, virt in [
        ("web", NODE_A, "Running", "kvm"),
        ("batch", NODE_A, "Running", "qemu"),
        ("pending", NODE_A, "Scheduled", "kvm"),
        ("elsewhere", NODE_B, "Running", "kvm"),
        ("done", NODE_A, "Succeeded", "kvm"),
    ]:
        vmi = make_vmi("prod", name, node, phase=phase)
        launchers.run_vmi(vmi, virt, node)
        api.create(vmi)
    with running_agent(api, tmp_path, NODE_A, pods_root) as agent:
        wait_until(
            lambda: series(agent) == {("prod", "web"): "kvm", ("prod", "batch"): "qemu-tcg"},
            10,
            "the two running VMIs of node-a",
        )
        assert node_labels(agent) == {NODE_A}
    selectors = [
        urllib.parse.parse_qs(r.query).get("labelSelector")
        for r in api.requests
        if r.verb == "list" and r.resource == "virtualmachineinstances"
    ]
    assert selectors and all(s == ["kubevirt.io/nodeName=node-a"] for s in selectors)


def test_real_fixture_vmis_are_read(api, tmp_path, pods_root, launchers) -> None:
    """The three real VMI objects as captured, each on its own node; the agent of each node sees one."""
    for fixture, virt in [
        ("vmi-running-ocp411-cat8kv-01.yaml", "kvm"),
        ("vmi-running-upstream-v0.49-testvm.yaml", "qemu"),
        ("vmi-running-cnv-2024-centos7-gray-owl-35.json", "kvm"),
    ]:
        vmi = load_fixture(fixture)
        node = vmi["status"]["nodeName"]
        launchers.run_vmi(vmi, virt, node)
        vmi["metadata"].pop("resourceVersion", None)
        api.create(vmi)
        with running_agent(api, tmp_path, node, pods_root) as agent:
            expected = {
                (vmi["metadata"]["namespace"], vmi["metadata"]["name"]): virt.replace("qemu", "qemu-tcg")
            }
            wait_until(lambda: series(agent) == expected, 10, f"{fixture}")  # noqa: B023 - used at once


def test_add_modify_delete_and_phase_changes(api, tmp_path, pods_root, launchers) -> None:
    with running_agent(api, tmp_path, NODE_A, pods_root) as agent:
        assert agent.synced.wait(10)
        vmi = make_vmi("dev", "vm1", NODE_A, phase="Scheduled")
        launchers.run_vmi(vmi, "qemu", NODE_A)
        api.create(vmi)
        _barrier(api, launchers, agent, NODE_A, "after-scheduled")
        assert _tenants(series(agent)) == {}, "a Scheduled VMI is not reported"
        assert sum(vmi_states(agent).values()) == 1, "nor tracked: only the barrier VMI is"
        api.patch_status("dev", "vm1", phase="Running")
        wait_until(lambda: _tenants(series(agent)) == {("dev", "vm1"): "qemu-tcg"}, 5, "vm1 running")
        api.patch_status("dev", "vm1", phase="Succeeded")
        wait_until(lambda: _tenants(series(agent)) == {}, 5, "vm1 gone after leaving Running")
        api.patch_status("dev", "vm1", phase="Running")
        wait_until(lambda: _tenants(series(agent)) == {("dev", "vm1"): "qemu-tcg"}, 5, "vm1 running again")
        api.delete("dev", "vm1")
        wait_until(lambda: _tenants(series(agent)) == {}, 5, "vm1 gone after deletion")


def test_new_launcher_pod_means_new_detection(api, tmp_path, pods_root, launchers) -> None:
    vmi = make_vmi("dev", "vm2", NODE_A, pod_uid="pod-old")
    launchers.run("pod-old", "dev", "vm2", "qemu")
    launchers.run("pod-new", "dev", "vm2", "kvm")
    api.create(vmi)
    with running_agent(api, tmp_path, NODE_A, pods_root) as agent:
        wait_until(lambda: series(agent) == {("dev", "vm2"): "qemu-tcg"}, 10, "first launcher")
        api.patch_status("dev", "vm2", activePods={"pod-new": NODE_A})
        wait_until(lambda: series(agent) == {("dev", "vm2"): "kvm"}, 5, "the new launcher's type")


def _connections(agent) -> dict[str, float]:
    return {labels["state"]: value for labels, value in samples(agent, "otel_vmi_hv_libvirt_connections")}


def test_a_failing_launcher_is_let_go_when_its_vmi_moves_to_a_new_pod(
    api, tmp_path, pods_root, launchers
) -> None:
    """The old launcher never answered (its daemon is gone): its state must not outlive its pod."""
    vmi = make_vmi("dev", "vm3", NODE_A, pod_uid="pod-gone")
    launchers.run("pod-new", "dev", "vm3", "kvm")
    api.create(vmi)
    with running_agent(api, tmp_path, NODE_A, pods_root) as agent:
        wait_until(lambda: series(agent) == {("dev", "vm3"): "unknown"}, 10, "unknown on the dead launcher")
        assert _connections(agent)["disconnected"] == 1
        api.patch_status("dev", "vm3", activePods={"pod-new": NODE_A})
        wait_until(lambda: series(agent) == {("dev", "vm3"): "kvm"}, 5, "the new launcher's type")
        wait_until(lambda: not any(_connections(agent).values()), 5, "no launcher state left")


def test_live_migration_hands_over_between_two_agents(api, tmp_path, pods_root, launchers) -> None:
    vmi = make_vmi("prod", "db", NODE_A, pod_uid="src-pod")
    launchers.run("src-pod", "prod", "db", "qemu")
    launchers.run("dst-pod", "prod", "db", "kvm")
    api.create(vmi)
    with (
        running_agent(api, tmp_path, NODE_A, pods_root) as agent_a,
        running_agent(api, tmp_path, NODE_B, pods_root) as agent_b,
    ):
        wait_until(lambda: series(agent_a) == {("prod", "db"): "qemu-tcg"}, 10, "source reports")
        assert agent_b.synced.wait(10)
        migrating = make_migrating_vmi(
            "prod",
            "db",
            NODE_A,
            NODE_B,
            source_pod_uid="src-pod",
            target_pod_uid="dst-pod",
            uid=vmi["metadata"]["uid"],
        )
        api.update(migrating)
        _barrier(api, launchers, agent_a, NODE_A, "after-migrating-a")
        _barrier(api, launchers, agent_b, NODE_B, "after-migrating-b")
        assert _tenants(series(agent_a)) == {("prod", "db"): "qemu-tcg"}, "the source keeps reporting"
        assert _tenants(series(agent_b)) == {}, "the target waits for the hand-off"
        done = make_migrating_vmi(
            "prod",
            "db",
            NODE_A,
            NODE_B,
            completed=True,
            source_pod_uid="src-pod",
            target_pod_uid="dst-pod",
            uid=vmi["metadata"]["uid"],
        )
        api.update(done)
        wait_until(
            lambda: _tenants(series(agent_b)) == {("prod", "db"): "kvm"}, 5, "the target reports its own type"
        )
        wait_until(lambda: _tenants(series(agent_a)) == {}, 5, "source stops reporting")
        assert node_labels(agent_b) == {NODE_B}


def test_relist_after_410_drops_vmis_deleted_during_the_gap(api, tmp_path, pods_root, launchers) -> None:
    for name in ("keep", "lost"):
        vmi = make_vmi("ops", name, NODE_A)
        launchers.run_vmi(vmi, "kvm", NODE_A)
        api.create(vmi)
    with running_agent(api, tmp_path, NODE_A, pods_root) as agent:
        wait_until(lambda: len(series(agent)) == 2, 10, "both VMIs")
        lists_before = vmi_lists(api)
        api.stop()  # the agent's watch breaks and cannot reconnect
        api.delete("ops", "lost")
        added = make_vmi("ops", "new", NODE_A)
        launchers.run_vmi(added, "qemu", NODE_A)
        api.create(added)
        api.compact()  # the agent's resume point is now too old: 410 Gone
        api.start()
        wait_until(
            lambda: series(agent) == {("ops", "keep"): "kvm", ("ops", "new"): "qemu-tcg"},
            15,
            "the cache reconciled with the truth",
        )
        assert vmi_lists(api) > lists_before, "a 410 must lead to a relist"


def test_dropped_stream_resumes_from_the_last_version_without_relisting(
    api, tmp_path, pods_root, launchers
) -> None:
    with running_agent(api, tmp_path, NODE_A, pods_root) as agent:
        assert agent.synced.wait(10)
        api.wait_for_watches(AGENT_WATCHES)
        lists = vmi_lists(api)
        assert api.drop_streams() == AGENT_WATCHES
        vmi = make_vmi("ops", "after-drop", NODE_A)
        launchers.run_vmi(vmi, "kvm", NODE_A)
        api.create(vmi)
        wait_until(lambda: series(agent) == {("ops", "after-drop"): "kvm"}, 10, "change after the drop")
        assert vmi_lists(api) == lists
        assert api.watch_requests >= 2


def test_bookmarks_move_the_resume_point(api, tmp_path, pods_root, launchers) -> None:
    other = make_vmi("ops", "noise", NODE_B)
    api.create(other)
    with running_agent(api, tmp_path, NODE_A, pods_root) as agent:
        assert agent.synced.wait(10)
        api.wait_for_watches(AGENT_WATCHES)
        for index in range(3):  # changes this node's watch does not see...
            api.patch_status("ops", "noise", phase="Running", reason=str(index))
        current = api.resource_version
        lists = vmi_lists(api)
        api.send_bookmarks()  # ...but the bookmark tells it how far the store has moved

        def resumed_at_current() -> bool:
            # Before the agent has read a bookmark, a cut stream resumes from the list's older
            # version; after, from this one. Cut until it does (bookmarks also come every 0.2 s).
            api.drop_streams()
            try:
                api.wait_for(
                    lambda: any(f"resourceVersion={current}" in q for q in api.queries("watch")),
                    f"a watch from resourceVersion={current}",
                    2,
                )
            except AssertionError:
                return False  # resumed from the list's version: cut again, until the deadline below
            return True

        wait_until(resumed_at_current, 10, "a watch resumed from the bookmark's version")
        assert vmi_lists(api) == lists, "the version must come from the bookmark, not from a relist"


def test_api_server_down_at_start(tmp_path, pods_root, launchers) -> None:
    api = FakeKubeAPIServer()
    api.start()
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    vmi = make_vmi("ops", "late", NODE_A)
    launchers.run_vmi(vmi, "kvm", NODE_A)
    api.create(vmi)
    api.stop()
    env = {
        "KUBECONFIG": str(kubeconfig),
        "OTEL_VMI_HV_SOURCE": "kubernetes",
        "OTEL_VMI_HV_NODE_NAME": NODE_A,
        "OTEL_VMI_HV_PODS_ROOT": str(pods_root),
        "OTEL_VMI_HV_LIBVIRT_URI": TEST_DRIVER_TEMPLATE,
    }
    try:
        with AgentProcess(env) as agent:
            wait_until(lambda: _get(agent, "/healthz")[0] == 200, 20, "healthz")
            assert _get(agent, "/readyz")[0] == 503
            api.start()
            agent.wait_ready()
            wait_until(lambda: 'name="late"' in agent.metrics(), 10, "the VMI after the API came up")
    finally:
        api.close()


def _get(agent: AgentProcess, path: str) -> tuple[int, str]:
    try:
        return http_get(agent.base_url + path, timeout=2)
    except OSError:
        return (0, "")


def test_unreachable_launcher_socket_falls_back_to_its_domain_file(api, tmp_path, pods_root) -> None:
    """The real VMI, its real launcher pod uid and its real domain XML, laid out as on the node."""
    vmi = load_fixture("vmi-running-ocp411-cat8kv-01.yaml")
    vmi["metadata"].pop("resourceVersion", None)
    node = vmi["status"]["nodeName"]
    (pod_uid,) = vmi["status"]["activePods"]
    qemu_dir = pods_root / pod_uid / "volumes/kubernetes.io~empty-dir/private/libvirt/qemu"
    qemu_dir.mkdir(parents=True)
    shutil.copy(FIXTURES / "domain-ocp411-cat8kv-01.xml", qemu_dir / "default_cat8kv-01.xml")
    api.create(vmi)
    # The default URI template: the launcher's virtqemud socket, which does not exist here.
    with running_agent(api, tmp_path, node, pods_root, OTEL_VMI_HV_LIBVIRT_URI="") as agent:
        wait_until(lambda: series(agent) == {("default", "cat8kv-01"): "kvm"}, 10, "kvm from the domain file")
        durations = samples(agent, "otel_vmi_hv_detection_duration_seconds_count")
        assert {labels["method"] for labels, count in durations if count} == {"domain_file"}
        ((item, _),) = agent.tracker.detections()  # the URI tried first is not in any output
        assert "virtqemud-sock" in item.target.uri and "session" in item.target.uri


def test_vmi_without_launcher_pod_is_reported_unknown(api, tmp_path, pods_root) -> None:
    vmi = make_vmi("ops", "odd", NODE_A)
    vmi["status"].pop("activePods")
    api.create(vmi)
    with running_agent(api, tmp_path, NODE_A, pods_root) as agent:
        wait_until(lambda: series(agent) == {("ops", "odd"): "unknown"}, 10, "unknown for the odd VMI")
        errors = samples(agent, "otel_vmi_hv_detection_errors_total")
        assert {labels["reason"] for labels, count in errors if count} == {"no_launcher_pod"}


def test_api_server_restored_with_a_new_history_converges(api, tmp_path, pods_root, launchers) -> None:
    """An etcd restore: resourceVersions jump, old ones are 410, and the stored set differs."""
    keep, lost, added = (make_vmi("ops", n, NODE_A) for n in ("keep", "lost", "added"))
    for vmi, virt in ((keep, "kvm"), (lost, "kvm"), (added, "qemu")):
        launchers.run_vmi(vmi, virt, NODE_A)
    api.create(keep)
    api.create(lost)
    with running_agent(api, tmp_path, NODE_A, pods_root) as agent:
        wait_until(lambda: len(series(agent)) == 2, 10, "keep and lost")
        api.restart_with_new_history(objects=[keep, added])
        wait_until(
            lambda: series(agent) == {("ops", "keep"): "kvm", ("ops", "added"): "qemu-tcg"},
            15,
            "the restored truth, with no duplicate and no stale series",
        )


def test_readiness_survives_a_transient_api_outage(api, tmp_path, pods_root, launchers) -> None:
    vmi = make_vmi("ops", "steady", NODE_A)
    launchers.run_vmi(vmi, "kvm", NODE_A)
    api.create(vmi)
    with running_agent(api, tmp_path, NODE_A, pods_root) as agent:
        wait_until(lambda: series(agent) == {("ops", "steady"): "kvm"}, 10, "steady")
        assert agent.readiness.pending() == []
        api.stop()
        api.wait_for(lambda: api.open_watches == 0, "every watch cut by the outage")
        # The cache still holds what it knew; /readyz is about having synced once, not about now.
        assert agent.readiness.pending() == []
        assert series(agent) == {("ops", "steady"): "kvm"}
        api.start()
        api.delete("ops", "steady")
        wait_until(lambda: series(agent) == {}, 15, "the deletion seen after the outage")


@pytest.mark.parametrize(
    "case",
    [
        # Not running on this node as far as the object can tell: not reported.
        pytest.param((lambda v: v.pop("status"), None), id="no-status"),
        pytest.param((lambda v: v["status"].update(phase=None), None), id="null-phase"),
        pytest.param((lambda v: v["status"].update(phase="Migrating"), None), id="unknown-phase"),
        pytest.param((lambda v: v["status"].update(nodeName=42), None), id="nodeName-int"),
        pytest.param((lambda v: v.update(status="Running"), None), id="status-string"),
        # Sent without a uid: the API server assigns one on create (as a real one does).
        pytest.param((lambda v: v["metadata"].pop("uid"), "qemu-tcg"), id="no-uid"),
        # Running here, but no launcher pod can be named: reported, as unknown (no_launcher_pod).
        pytest.param(
            (lambda v: v["status"].update(activePods=["not", "a", "map"]), "unknown"), id="activePods-list"
        ),
        # An unreadable runtimeUser means the default (root launcher): detected as usual.
        pytest.param((lambda v: v["status"].update(runtimeUser="107"), "qemu-tcg"), id="runtimeUser-string"),
    ],
)
def test_odd_vmi_objects_never_break_the_agent(api, tmp_path, pods_root, launchers, case) -> None:
    mutate, reported_as = case
    good = make_vmi("ops", "good", NODE_A)
    launchers.run_vmi(good, "kvm", NODE_A)
    odd = make_vmi("ops", "odd", NODE_A)
    launchers.run_vmi(odd, "qemu", NODE_A)
    mutate(odd)
    api.create(good)
    api.create(odd)
    with running_agent(api, tmp_path, NODE_A, pods_root) as agent:
        wait_until(lambda: ("ops", "good") in series(agent), 10, "the good VMI")
        after = make_vmi("ops", "after", NODE_A)
        launchers.run_vmi(after, "kvm", NODE_A)
        api.create(after)
        wait_until(lambda: ("ops", "after") in series(agent), 10, "VMIs after the odd one still flow")
        if reported_as is None:
            wait_until(lambda: vmi_states(agent).get("pending") == 0, 10, "no detection pending")
            assert ("ops", "odd") not in series(agent)
            assert sum(vmi_states(agent).values()) == 2, "only good and after are tracked"
        else:
            wait_until(lambda: series(agent).get(("ops", "odd")) == reported_as, 10, f"odd as {reported_as}")


def test_names_at_the_length_limits(api, tmp_path, pods_root, launchers) -> None:
    namespace, name = "n" * 63, "v" * 63  # DNS label limits (a VMI name is also a pod hostname)
    vmi = make_vmi(namespace, name, NODE_A)
    launchers.run_vmi(vmi, "kvm", NODE_A)
    api.create(vmi)
    with running_agent(api, tmp_path, NODE_A, pods_root) as agent:
        wait_until(lambda: series(agent) == {(namespace, name): "kvm"}, 10, "the long-named VMI")


def test_watch_refused_with_http_410_leads_to_a_relist(api, tmp_path, pods_root, launchers) -> None:
    with running_agent(api, tmp_path, NODE_A, pods_root) as agent:
        assert agent.synced.wait(10)
        api.wait_for_watches(AGENT_WATCHES)
        lists = vmi_lists(api)
        api.fail_requests(1, status=410, verbs=["watch"], plurals=["virtualmachineinstances"])
        api.drop_streams()
        api.wait_for(lambda: vmi_lists(api) > lists, "a VMI relist after the 410", 10)
        vmi = make_vmi("ops", "after-410", NODE_A)
        launchers.run_vmi(vmi, "kvm", NODE_A)
        api.create(vmi)
        wait_until(lambda: series(agent) == {("ops", "after-410"): "kvm"}, 10, "changes after the relist")
