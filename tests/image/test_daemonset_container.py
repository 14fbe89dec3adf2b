"""The image run with the DaemonSet's settings against a real KubeVirt-like node.

The path no other test crosses: the container, its capabilities and a real launcher socket together.
The node has two launcher pods under a kubelet-like pods directory, mounted read-only at /pods:

* ``prod/web``: a real session-mode libvirt daemon running a real QEMU domain (TCG); its socket sits
  at the launcher's path, owned by uid 107 in a mode-0700 directory of uid 107, as non-root
  launchers have it. Only CAP_DAC_OVERRIDE lets root connect.
* ``default/cat8kv-01``: no daemon socket in its (uid 107, 0700) runtime folder, only the launcher's
  persistent domain XML (a real KubeVirt one, 0600 in 0700 directories of uid 107): the agent's
  fallback reads the file.

The VMIs come from the fake API server (real KubeVirt objects) through a kubeconfig; the container
shares the host's network to reach it on the loopback address.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from otel_vmi_hv.model import hypervisor_type_for
from tests.agent_process import free_port, http_get, wait_until
from tests.conftest import FIXTURES
from tests.exposition import info_series, parse_samples
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import make_vmi
from tests.harness import libvirtd as lv
from tests.harness.fixtures import require
from tests.image.daemonset import DaemonSetContainer
from tests.image.podman import Container, podman, process_status

NODE = "kubevirt-nn4bm-worker-9fxdj"  # the node of the real VMI fixture, so its pod uid and XML match
LAUNCHER_UID = 107  # KubeVirt's qemu user: owner of a non-root launcher's files
CAP_DAC_OVERRIDE_BIT = 1 << 1
KUBELET_PODS_MODE = 0o750
SHUTDOWN_BUDGET_SECONDS = 5.0
KUBECONFIG_IN_CONTAINER = "/etc/otel-vmi-hv/kubeconfig"
DOMAIN_FIXTURE = FIXTURES / "domain-ocp411-cat8kv-01.xml"


@dataclass(frozen=True)
class Node:
    """A KubeVirt-like node: API server, pods directory, and what each VMI should be reported as."""

    api: FakeKubeAPIServer
    pods_dir: Path
    kubeconfig: Path
    over_socket: tuple[str, str]  # (namespace, name) whose launcher has a live daemon socket
    from_file: tuple[str, str]  # (namespace, name) whose launcher has only the domain XML
    expected: dict[tuple[str, str], str]  # hypervisor_type per VMI, read from the domains themselves


def _launcher_dir(pods_dir: Path, pod_uid: str) -> Path:
    """``<pods>/<pod uid>/volumes/kubernetes.io~empty-dir`` with the kubelet's modes (root, 0750)."""
    pod_dir = pods_dir / pod_uid
    empty_dir = pod_dir / lv.EMPTY_DIR
    empty_dir.mkdir(parents=True)
    for path in (pod_dir, pod_dir / "volumes"):
        os.chmod(path, KUBELET_PODS_MODE)
    os.chmod(empty_dir, 0o777)  # noqa: S103 - as the kubelet makes emptyDirs
    return empty_dir


def _owned_by_launcher(path: Path, mode: int) -> None:
    os.chown(path, LAUNCHER_UID, LAUNCHER_UID, follow_symlinks=False)
    os.chmod(path, mode)


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    require(lv.missing_binaries(), "the real libvirt daemon")
    top = Path(tempfile.mkdtemp(prefix="ovh-image-node-", dir="/tmp"))
    daemon = lv.LibvirtDaemon.launch()
    try:
        with FakeKubeAPIServer() as api:
            pods_dir = top / "pods"
            pods_dir.mkdir(mode=KUBELET_PODS_MODE)

            # Launcher 1: a real daemon, its socket at the launcher's path. A hard link, not a
            # symlink: the container sees only /pods, and a link to the same inode is the socket
            # itself (connect() finds the listener by inode); its owner and mode are the inode's.
            web = make_vmi("prod", "web", NODE)
            (web_pod,) = web["status"]["activePods"]
            domain = daemon.define("prod_web")
            runtime = _launcher_dir(pods_dir, web_pod) / "libvirt-runtime"
            runtime.mkdir()
            os.link(daemon.socket_path, runtime / "virtqemud-sock")
            _owned_by_launcher(runtime / "virtqemud-sock", 0o700)
            _owned_by_launcher(runtime, 0o700)

            # Launcher 2: its daemon's runtime folder (uid 107, 0700) holds no socket, as when the
            # daemon is not answering; the persistent domain XML is where KubeVirt keeps it.
            legacy = make_vmi("default", "cat8kv-01", NODE)
            (legacy_pod,) = legacy["status"]["activePods"]
            legacy_dir = _launcher_dir(pods_dir, legacy_pod)
            (legacy_dir / "libvirt-runtime").mkdir()
            _owned_by_launcher(legacy_dir / "libvirt-runtime", 0o700)
            private = legacy_dir / "private"
            qemu_dir = private / "libvirt" / "qemu"
            qemu_dir.mkdir(parents=True)
            xml_file = qemu_dir / "default_cat8kv-01.xml"
            shutil.copyfile(DOMAIN_FIXTURE, xml_file)
            _owned_by_launcher(xml_file, 0o600)
            for path in (qemu_dir, qemu_dir.parent, private):
                _owned_by_launcher(path, 0o700)

            api.create(web)
            api.create(legacy)
            kubeconfig = api.write_kubeconfig(top / "kubeconfig")
            file_type = ET.parse(DOMAIN_FIXTURE).getroot().get("type", "")
            yield Node(
                api=api,
                pods_dir=pods_dir,
                kubeconfig=kubeconfig,
                over_socket=("prod", "web"),
                from_file=("default", "cat8kv-01"),
                expected={
                    ("prod", "web"): hypervisor_type_for(domain["virt_type"]),
                    ("default", "cat8kv-01"): hypervisor_type_for(file_type),
                },
            )
    finally:
        daemon.cleanup()
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def daemonset() -> DaemonSetContainer:
    return DaemonSetContainer.load()


def _run_args(
    daemonset: DaemonSetContainer, node: Node, port: int, drop: frozenset[str] = frozenset()
) -> list[str]:
    """The manifest's settings; the overrides are only what a test machine cannot share with a node."""
    overrides = {
        # The host's network (to reach the fake API server on loopback): a free port, loopback only.
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        # No Collector here: a loopback port nothing listens on (the agent keeps serving /metrics).
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        # In a pod the service account's token; here the fake API server's kubeconfig.
        "KUBECONFIG": KUBECONFIG_IN_CONTAINER,
    }
    return [
        "--network=host",
        "--volume",
        f"{node.kubeconfig}:{KUBECONFIG_IN_CONTAINER}:ro",
        *daemonset.run_args(
            pods_dir=node.pods_dir,
            field_values={"spec.nodeName": NODE},
            env_overrides=overrides,
            drop_capabilities=drop,
        ),
    ]


def _detect(image: str, run_args: list[str]) -> dict[tuple[str, str], dict[str, str]]:
    result = podman("run", "--rm", *run_args, image, "detect", "--output", "json", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return {(row["namespace"], row["name"]): row for row in json.loads(result.stdout)}


@pytest.fixture(scope="module")
def agent(image: str, node: Node, daemonset: DaemonSetContainer) -> Iterator[tuple[Container, str]]:
    port = free_port()
    with Container(image, _run_args(daemonset, node, port), daemonset.command()) as container:
        base = f"http://127.0.0.1:{port}"

        def detected() -> dict[tuple[str, str], str] | None:
            try:
                status, body = http_get(base + "/metrics", timeout=2)
            except OSError:
                return None
            series = {key: labels["hypervisor_type"] for key, labels in info_series(body).items()}
            return series if status == 200 and series == node.expected else None

        wait_until(detected, 60, f"both VMIs detected; container log:\n{container.logs()}", interval=0.2)
        yield container, base


def test_runs_with_exactly_the_manifests_privileges(
    agent: tuple[Container, str], daemonset: DaemonSetContainer
) -> None:
    container, _ = agent
    status = process_status(container.pid)
    assert daemonset.capabilities_added == ["DAC_OVERRIDE"]
    assert status.uid == 0
    assert status.effective_capabilities == CAP_DAC_OVERRIDE_BIT
    assert status.no_new_privs
    write = container.exec("python", "-c", "open('/probe', 'w')")
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write
    pods_write = container.exec("python", "-c", f"open('{daemonset.pods_mount_path}/probe', 'w')")
    assert pods_write.returncode != 0 and "Read-only file system" in pods_write.stderr, pods_write
    tmp_write = container.exec("python", "-c", "open('/tmp/probe', 'w').write('x')")
    assert tmp_write.returncode == 0, tmp_write.stderr


def test_both_launchers_are_reported_with_their_types(agent: tuple[Container, str], node: Node) -> None:
    _, base = agent
    body = http_get(base + "/metrics")[1]
    series = info_series(body)
    assert {key: labels["hypervisor_type"] for key, labels in series.items()} == node.expected
    assert {labels["node"] for labels in series.values()} == {NODE}
    methods = {labels["method"]: value for labels, value in _histogram_counts(body)}
    assert methods.get("libvirt") == 1 and methods.get("domain_file") == 1, methods


def _histogram_counts(body: str) -> list[tuple[dict[str, str], float]]:
    return parse_samples(body, "otel_vmi_hv_detection_duration_seconds_count")


def test_detect_in_the_pod_names_how_each_launcher_was_read(agent: tuple[Container, str], node: Node) -> None:
    container, _ = agent
    result = container.exec("otel-vmi-hv", "detect", "--output", "json")
    assert result.returncode == 0, result.stderr
    rows = {(row["namespace"], row["name"]): row for row in json.loads(result.stdout)}
    assert rows[node.over_socket]["method"] == "libvirt"
    assert rows[node.from_file]["method"] == "domain_file"
    assert {key: row["hypervisor_type"] for key, row in rows.items()} == node.expected


def test_without_dac_override_both_launchers_are_permission_denied(
    image: str, node: Node, daemonset: DaemonSetContainer
) -> None:
    rows = _detect(image, _run_args(daemonset, node, free_port(), drop=frozenset({"DAC_OVERRIDE"})))
    assert set(rows) == set(node.expected)
    for key, row in rows.items():
        assert (row["hypervisor_type"], row["error"]) == ("unknown", "permission_denied"), (key, row)


def test_idle_memory_fits_the_manifests_request_and_limit(
    agent: tuple[Container, str], daemonset: DaemonSetContainer
) -> None:
    container, _ = agent
    rss = process_status(container.pid).rss_bytes
    mib = 1024 * 1024
    print(
        f"idle RSS {rss / mib:.1f} MiB; DaemonSet request {daemonset.memory_request / mib:.0f} MiB, "
        f"limit {daemonset.memory_limit / mib:.0f} MiB"
    )
    assert rss <= daemonset.memory_request <= daemonset.memory_limit


def test_sigterm_ends_it_with_status_0_within_5_seconds(
    image: str, node: Node, daemonset: DaemonSetContainer
) -> None:
    port = free_port()
    with Container(image, _run_args(daemonset, node, port), daemonset.command()) as container:
        wait_until(lambda: _ready(f"http://127.0.0.1:{port}/readyz"), 60, f"ready; log:\n{container.logs()}")
        status, seconds = container.terminate()
        print(f"SIGTERM to exit with the DaemonSet's settings: {seconds:.2f}s")
        assert status == 0, container.logs()
        assert seconds < SHUTDOWN_BUDGET_SECONDS


def _ready(url: str) -> bool:
    try:
        return http_get(url, timeout=2)[0] == 200
    except OSError:
        return False
