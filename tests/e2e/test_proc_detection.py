"""The proc method against real QEMU processes, read through the real /proc by another user.

The QEMUs are the harness's real libvirt domains (session daemon: TCG, QEMU running as nobody;
system daemon: KVM where /dev/kvm works) and, for the "no vCPU thread yet" state, a QEMU started
directly with ``--preconfig`` (it stops before machine init creates its vCPUs). The detector runs
in a child process as uid 65532 with no capability (``setpriv``), as the proc-only DaemonSet
variant does; the hidepid tests mount a private procfs in a private mount namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness.libvirtd import (
    QEMU_SYSTEM_X86_64,
    LibvirtDaemon,
    SystemLibvirtDaemon,
    domain_xml,
    kvm_usable,
)
from tests.peers import require

pytestmark = pytest.mark.libvirtd

DETECTOR_UID = 65532  # not nobody (65534), which owns the session daemon's QEMUs
HIDEPID_GID = 4242

# Runs in the unprivileged child: one detector, the queries from argv, answers as JSON.
_CHILD = """
import json, os, sys
from otel_vmi_hv.detection.proc.detector import ProcDetector
detector = ProcDetector(sys.argv[1])
answers = [detector.detect_domain(name, pod) for name, pod in json.loads(sys.argv[2])]
print(json.dumps({"euid": os.geteuid(), "answers": [
    {"hypervisor_type": a.hypervisor_type, "method": str(a.method), "error": a.error, "detail": a.detail}
    for a in answers]}))
"""


def _unique(prefix: str) -> str:
    return f"default_{prefix}-{uuid.uuid4().hex[:8]}"


def detect_as_other_user(
    queries: Sequence[tuple[str, str | None]],
    *,
    proc_root: str = "/proc",
    groups: Sequence[int] = (),
    hidepid_mount: str | None = None,
) -> list[dict[str, Any]]:
    """Run the detector as uid/gid 65532 with no capability; optionally on a private hidepid procfs."""
    require("root")  # to switch to another user
    as_user = [
        require("setpriv"), f"--reuid={DETECTOR_UID}", f"--regid={DETECTOR_UID}",
        f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        sys.executable, "-c", _CHILD, proc_root, json.dumps(list(queries)),
    ]  # fmt: skip
    argv = as_user
    if hidepid_mount is not None:
        argv = [
            require("unshare"), "-m", "--propagation", "private", "/bin/sh", "-c",
            'mount -t proc -o "$1" proc "$2" && shift 2 && exec "$@"', "sh", hidepid_mount, proc_root,
            *as_user,
        ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/", check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["euid"] == DETECTOR_UID
    answers: list[dict[str, Any]] = report["answers"]
    assert all(a["method"] == "proc" for a in answers)
    return answers


@pytest.fixture
def tcg_domain(libvirtd: LibvirtDaemon) -> Iterator[str]:
    name = _unique("proc-tcg")
    libvirtd.define(name)
    try:
        yield name
    finally:
        libvirtd.undefine(name)


def test_tcg_domain_read_by_an_unprivileged_user(libvirtd: LibvirtDaemon, tcg_domain: str) -> None:
    assert libvirtd.domain(tcg_domain)["virt_type"] == "qemu"  # libvirt's own word: TCG
    (answer, absent) = detect_as_other_user([(tcg_domain, None), (_unique("never-started"), None)])
    assert (answer["hypervisor_type"], answer["error"]) == ("qemu-tcg", None), answer["detail"]
    assert f"pid {libvirtd.qemu_pid(tcg_domain)}" in answer["detail"]
    assert (absent["hypervisor_type"], absent["error"]) == ("unknown", "no_process")


def test_paused_domain(libvirtd: LibvirtDaemon) -> None:
    name = _unique("proc-paused")
    libvirtd.define(name, paused=True)
    try:
        assert libvirtd.domain(name)["state"] == 3  # VIR_DOMAIN_PAUSED
        (answer,) = detect_as_other_user([(name, None)])
        assert answer["hypervisor_type"] == "qemu-tcg", answer["detail"]
    finally:
        libvirtd.undefine(name)


def test_domain_with_several_vcpus(libvirtd: LibvirtDaemon) -> None:
    name = _unique("proc-smp")
    xml = domain_xml(name).replace("<vcpu>1</vcpu>", "<vcpu>3</vcpu>")
    libvirtd.define(name, xml=xml)
    try:
        (answer,) = detect_as_other_user([(name, None)])
        assert answer["hypervisor_type"] == "qemu-tcg", answer["detail"]
        # x86 guests on an x86 host get multi-threaded TCG: one named thread per vCPU.
        assert "3 vCPU threads" in answer["detail"]
    finally:
        libvirtd.undefine(name)


def test_kvm_domain(system_libvirtd: SystemLibvirtDaemon) -> None:
    """Only where /dev/kvm works (the fixture skips with the probe's reason elsewhere)."""
    name = _unique("proc-kvm")
    system_libvirtd.define(name, virt_type="kvm", paused=True)
    try:
        assert system_libvirtd.domain(name)["virt_type"] == "kvm"
        (answer,) = detect_as_other_user([(name, None)])
        assert answer["hypervisor_type"] == "kvm", answer["detail"]
    finally:
        system_libvirtd.undefine(name)


@pytest.fixture
def private_proc_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="ovh-proc-")
    os.chmod(path, 0o755)  # noqa: S103 - an empty mount point the detector's user must traverse
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_hidepid_procfs_gives_permission_denied_naming_the_group(
    tcg_domain: str, private_proc_dir: str
) -> None:
    (answer,) = detect_as_other_user(
        [(tcg_domain, None)],
        proc_root=private_proc_dir,
        hidepid_mount=f"hidepid=invisible,gid={HIDEPID_GID}",
    )
    assert (answer["hypervisor_type"], answer["error"]) == ("unknown", "permission_denied")
    assert str(HIDEPID_GID) in answer["detail"]


def test_hidepid_procfs_member_of_the_group_sees_the_qemu(tcg_domain: str, private_proc_dir: str) -> None:
    (answer,) = detect_as_other_user(
        [(tcg_domain, None)],
        proc_root=private_proc_dir,
        groups=[HIDEPID_GID],
        hidepid_mount=f"hidepid=invisible,gid={HIDEPID_GID}",
    )
    assert answer["hypervisor_type"] == "qemu-tcg", answer["detail"]


def test_hidepid_noaccess_without_group_is_permission_denied(tcg_domain: str, private_proc_dir: str) -> None:
    (answer,) = detect_as_other_user(
        [(tcg_domain, None)], proc_root=private_proc_dir, hidepid_mount="hidepid=noaccess"
    )
    assert answer["error"] == "permission_denied", answer["detail"]
    assert "no gid=" in answer["detail"]


# --------------------------------------------------------- a real QEMU before its vCPUs exist


class DirectQemu:
    """A QEMU started without libvirt, driven over QMP.

    With ``preconfig`` it stops before machine init: no vCPU thread until ``exit_preconfig``
    (``x-exit-preconfig``), the state every QEMU passes through at start. Without it, the vCPU
    threads exist once QMP answers (the monitor starts after machine init); ``-S`` keeps them idle.
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        debug_threads: bool = True,
        preconfig: bool = True,
        accel: str = "tcg",
    ) -> None:
        self.qmp_path = workdir / f"qmp-{uuid.uuid4().hex[:8]}.sock"
        option = f"guest={name}" + (",debug-threads=on" if debug_threads else "")
        self.process = subprocess.Popen(
            [
                QEMU_SYSTEM_X86_64,
                "-name",
                option,
                "--preconfig" if preconfig else "-S",
                "-nodefaults",
                "-display",
                "none",
                "-machine",
                "pc",
                "-accel",
                accel,
                "-m",
                "32",
                "-qmp",
                f"unix:{self.qmp_path},server=on,wait=off",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            self._qmp = self._connect()
            self._command("qmp_capabilities")
        except BaseException:
            self.stop()
            raise

    def _connect(self) -> Any:
        deadline = time.monotonic() + 20
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.qmp_path))
            except OSError:
                sock.close()
                assert self.process.poll() is None, self.process.stderr.read() if self.process.stderr else ""
                assert time.monotonic() < deadline, "QEMU's QMP socket never appeared"
                time.sleep(0.01)
                continue
            sock.settimeout(20)
            stream = sock.makefile("rw")
            assert "QMP" in json.loads(stream.readline())  # the greeting
            return stream

    def _command(self, name: str) -> None:
        self._qmp.write(json.dumps({"execute": name}) + "\n")
        self._qmp.flush()
        while True:  # events (RESUME...) may come before the reply
            reply = json.loads(self._qmp.readline())
            if "return" in reply or "error" in reply:
                assert "return" in reply, reply
                return

    def exit_preconfig(self) -> None:
        self._command("x-exit-preconfig")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def qemu_workdir(tmp_path: Path) -> Path:
    require("qemu")
    return tmp_path


def test_qemu_without_vcpu_threads_is_pending_then_detected(qemu_workdir: Path) -> None:
    name = _unique("proc-preconfig")
    qemu = DirectQemu(name, qemu_workdir)
    try:
        (answer,) = detect_as_other_user([(name, None)])
        assert (answer["hypervisor_type"], answer["error"]) == ("unknown", "pending"), answer["detail"]
        qemu.exit_preconfig()  # machine init: the vCPU thread exists when QMP answers
        (answer,) = detect_as_other_user([(name, None)])
        assert (answer["hypervisor_type"], answer["error"]) == ("qemu-tcg", None), answer["detail"]
    finally:
        qemu.stop()


def test_qemu_without_debug_threads_is_not_left_pending(qemu_workdir: Path) -> None:
    name = _unique("proc-unnamed")
    qemu = DirectQemu(name, qemu_workdir, debug_threads=False)
    try:
        qemu.exit_preconfig()
        (answer,) = detect_as_other_user([(name, None)])
        assert (answer["hypervisor_type"], answer["error"]) == ("unknown", "no_thread_names")
    finally:
        qemu.stop()


# ------------------------------------------- launcher pods told apart by the real /proc/<pid>/cgroup


@contextlib.contextmanager
def pod_cgroup(pod_uid: str) -> Iterator[Path]:
    """A real cgroup named as the kubelet's systemd driver names a burstable pod's, in a private
    parent folder (removed after), in the first writable hierarchy: cgroup v1 ``pids`` or v2."""
    parent = Path(require("cgroup")) / f"ovh-test-{uuid.uuid4().hex[:8]}"
    leaf = parent / f"kubepods-burstable-pod{pod_uid.replace('-', '_')}.slice"
    leaf.mkdir(parents=True)
    try:
        yield leaf
    finally:
        for path in (leaf, parent):
            with contextlib.suppress(OSError):
                path.rmdir()


def test_migration_launchers_on_one_node_are_told_apart_by_pod(qemu_workdir: Path) -> None:
    """Two real QEMUs run the same domain, each in its own pod-like cgroup, as a migration's source
    and target launchers do: each pod UID gets its own QEMU's type, never the other's."""
    name = _unique("proc-migration")
    source_pod, target_pod = str(uuid.uuid4()), str(uuid.uuid4())
    target_accel = "kvm" if kvm_usable()[0] else "tcg"
    with pod_cgroup(source_pod) as source_cgroup, pod_cgroup(target_pod) as target_cgroup:
        source = DirectQemu(name, qemu_workdir, preconfig=False, accel="tcg")
        try:
            target = DirectQemu(name, qemu_workdir, preconfig=False, accel=target_accel)
            try:
                (source_cgroup / "cgroup.procs").write_text(str(source.pid))
                (target_cgroup / "cgroup.procs").write_text(str(target.pid))
                by_source, by_target, by_name = detect_as_other_user(
                    [(name, source_pod), (name, target_pod), (name, None)]
                )
            finally:
                target.stop()
        finally:
            source.stop()
    assert by_source["hypervisor_type"] == "qemu-tcg" and f"pid {source.pid}" in by_source["detail"]
    expected = "kvm" if target_accel == "kvm" else "qemu-tcg"
    assert by_target["hypervisor_type"] == expected and f"pid {target.pid}" in by_target["detail"]
    assert by_name["error"] == "ambiguous"
