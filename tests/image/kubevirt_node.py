"""A KubeVirt-like node for the image: the fake API server and two launcher pods, one with a real daemon.

Under a kubelet-like pods directory (root, 0750), to be mounted read-only at /pods:

* ``prod/web``: a real session-mode libvirt daemon running a real QEMU domain (TCG); its socket sits
  at the launcher's path, owned by uid 107 in a mode-0700 directory of uid 107, as non-root
  launchers have it. Only CAP_DAC_OVERRIDE lets root connect.
* ``default/cat8kv-01``: no daemon socket in its (uid 107, 0700) runtime folder, only the launcher's
  persistent domain XML (a real KubeVirt one, 0600 in 0700 directories of uid 107): the agent's
  fallback reads the file.

The VMIs are real KubeVirt objects served by the fake API server, reached through a kubeconfig.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from otel_vmi_hv.model import hypervisor_type_for
from tests.agent_process import free_port
from tests.conftest import FIXTURES
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import make_vmi
from tests.harness import libvirtd as lv
from tests.image.daemonset import DaemonSetContainer

NODE: Final = "kubevirt-nn4bm-worker-9fxdj"  # the real VMI fixture's node: its pod uid and XML match
LAUNCHER_UID: Final = 107  # KubeVirt's qemu user: owner of a non-root launcher's files
KUBELET_PODS_MODE: Final = 0o750
DOMAIN_FIXTURE: Final = FIXTURES / "domain-ocp411-cat8kv-01.xml"
KUBECONFIG_IN_CONTAINER: Final = "/etc/otel-vmi-hv/kubeconfig"


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


@contextlib.contextmanager
def kubevirt_node() -> Iterator[Node]:
    """Start the node (a libvirt daemon, the fake API server) and lay out its two launchers."""
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


def daemonset_run_args(
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
