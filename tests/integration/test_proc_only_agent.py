"""The agent in KubeVirt mode with /proc as its only method: no pods-root mount, no libvirt socket.

VMIs come from the fake API server through the real client; the "host /proc" is a fake tree with
the files the kernel shows (tests/fakes/proc_tree.py): the launcher's QEMU in its pod's cgroup, its
vCPU threads named by accelerator. A migration target's QEMU (another pod) runs the same domain on
the same node and must not be taken for the source's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_vmi_hv.cli import main
from tests.agent_process import wait_until
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import NODE, make_vmi
from tests.fakes.proc_tree import FakeProcess, write_proc_tree
from tests.integration.kube_env import running_agent, series


def _qemu(pid: int, namespace: str, name: str, pod_uid: str, accelerator: str) -> FakeProcess:
    slice_ = f"kubepods-burstable-pod{pod_uid.replace('-', '_')}.slice"
    return FakeProcess(
        pid,
        "qemu-kvm",
        ("/usr/libexec/qemu-kvm", "-name", f"guest={namespace}_{name},debug-threads=on", "-S"),
        cgroup=f"0::/kubepods.slice/kubepods-burstable.slice/{slice_}/cri-containerd-abc.scope\n",
        threads=("IO mon_iothread", f"CPU 0/{accelerator}", f"CPU 1/{accelerator}"),
    )


def test_series_come_from_proc_alone(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    fast = make_vmi("prod", "fast", NODE, pod_uid="11111111-1111-1111-1111-111111111111")
    slow = make_vmi("prod", "slow", NODE, pod_uid="22222222-2222-2222-2222-222222222222")
    gone = make_vmi("prod", "no-qemu", NODE, pod_uid="33333333-3333-3333-3333-333333333333")
    for vmi in (fast, slow, gone):
        api.create(vmi)
    proc = write_proc_tree(
        tmp_path / "proc",
        [
            _qemu(100, "prod", "fast", "11111111-1111-1111-1111-111111111111", "KVM"),
            _qemu(200, "prod", "slow", "22222222-2222-2222-2222-222222222222", "TCG"),
            # a migration target's QEMU for "fast" in another pod: TCG, and not this VMI's launcher
            _qemu(300, "prod", "fast", "44444444-4444-4444-4444-444444444444", "TCG"),
            FakeProcess(400, "sshd", ("/usr/sbin/sshd",)),
        ],
    )
    missing_pods_root = tmp_path / "no-pods-mount"
    with running_agent(api, tmp_path, NODE, missing_pods_root, OTEL_VMI_HV_PROC_ROOT=str(proc)) as agent:
        expected = {("prod", "fast"): "kvm", ("prod", "slow"): "qemu-tcg", ("prod", "no-qemu"): "unknown"}
        wait_until(lambda: series(agent) == expected, 10, "types read from /proc")
        methods = {vmi.name: d.method.value for vmi, d in agent.tracker.detections() if d is not None}
        errors = {vmi.name: d.error for vmi, d in agent.tracker.detections() if d is not None}
        assert methods == {"fast": "proc", "slow": "proc", "no-qemu": "proc"}
        assert errors["no-qemu"] == "no_process", "no libvirt socket was tried: there is no pods root"


def test_detect_shows_where_proc_and_libvirt_disagree(
    api: FakeKubeAPIServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """detect asks both; libvirt's answer is reported and /proc's is shown beside it."""
    import json

    from tests.integration.kube_env import Launchers, set_detect_environment

    pods_root = tmp_path / "pods"
    vmi = make_vmi("prod", "vm", NODE, pod_uid="55555555-5555-5555-5555-555555555555")
    api.create(vmi)
    Launchers(pods_root).run_vmi(vmi, "kvm", NODE)  # libvirt says kvm
    proc = write_proc_tree(
        tmp_path / "proc", [_qemu(100, "prod", "vm", "55555555-5555-5555-5555-555555555555", "TCG")]
    )
    set_detect_environment(monkeypatch, api, tmp_path, NODE, pods_root, OTEL_VMI_HV_PROC_ROOT=str(proc))
    assert main(["detect", "--output", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["hypervisor_type"], row["method"], row["proc_says"]) == ("kvm", "libvirt", "qemu-tcg")
