"""The proc method on fake /proc trees: every layout of tests/fixtures/proc/cases.yaml, the hidepid
hint, shared passes over /proc between concurrent callers, and a /proc that cannot be read."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from otel_vmi_hv.detection.proc.detector import ProcDetector
from otel_vmi_hv.detection.proc.parse import pod_uid_from_cgroup, proc_mount_options
from otel_vmi_hv.detection.proc.scan import ProcScan, scan_proc
from otel_vmi_hv.model import UNKNOWN, DetectionMethod
from tests.agent_process import wait_until
from tests.fakes.proc_tree import (
    Case,
    FakeProcess,
    Query,
    build_case,
    load_cases,
    write_proc_tree,
    write_process,
)

CASES = load_cases()
QUERIES = [(case, query) for case in CASES for query in case.queries]


def detector_for(tmp_path: Path, case: Case) -> ProcDetector:
    proc, mountinfo = build_case(tmp_path, case)
    return ProcDetector(str(proc), scan=functools.partial(scan_proc, mountinfo_path=str(mountinfo)))


@pytest.mark.parametrize(
    ("case", "query"),
    QUERIES,
    ids=[f"{case.name}:{query.domain}@{query.pod_uid or '-'}" for case, query in QUERIES],
)
def test_fixture_case(tmp_path: Path, case: Case, query: Query) -> None:
    detection = detector_for(tmp_path, case).detect_domain(query.domain, query.pod_uid)
    assert detection.method is DetectionMethod.PROC
    assert (detection.hypervisor_type, detection.error) == (query.hypervisor_type, query.error), (
        detection.detail
    )


def test_every_case_is_exercised() -> None:
    # Each layout the issue lists has a case; a case with no query would prove nothing.
    assert len(CASES) >= 12
    assert all(case.queries for case in CASES)


def test_success_names_the_process_and_its_threads(tmp_path: Path) -> None:
    (case,) = [c for c in CASES if c.name == "cgroup-v2-systemd-burstable-qemu-kvm"]
    detection = detector_for(tmp_path, case).detect_domain(
        "default_vmi-fedora", "3b0c4f2e-7d1a-4c55-9a43-2f0d9f1e8b6a"
    )
    assert detection.ok and detection.error is None
    assert "pid 4242" in detection.detail and "2 vCPU threads" in detection.detail


def test_pending_is_its_own_answer(tmp_path: Path) -> None:
    (case,) = [c for c in CASES if c.name == "no-vcpu-thread-yet"]
    detector = detector_for(tmp_path, case)
    detection = detector.detect_domain("default_starting", "bbbb0001-0000-4000-8000-000000000001")
    assert detection.pending and not detection.ok
    # The vCPU thread appears: the next call sees it (nothing was cached).
    proc = Path(detector.proc_root)
    (proc / "9101" / "task" / "9150").mkdir()
    (proc / "9101" / "task" / "9150" / "comm").write_text("CPU 0/KVM\n")
    detection = detector.detect_domain("default_starting", "bbbb0001-0000-4000-8000-000000000001")
    assert detection.hypervisor_type == "kvm" and not detection.pending


def test_hidepid_answer_names_the_group(tmp_path: Path) -> None:
    (case,) = [c for c in CASES if c.name == "hidepid-invisible"]
    detection = detector_for(tmp_path, case).detect_domain("default_vmi-fedora", None)
    assert detection.hypervisor_type == UNKNOWN and detection.error == "permission_denied"
    assert "hidepid=invisible" in detection.detail and "4242" in detection.detail


def test_hidepid_without_gid_says_to_add_one(tmp_path: Path) -> None:
    proc = write_proc_tree(tmp_path / "proc", [], with_init=False)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"310 22 0:5 / {proc} rw - proc proc rw,hidepid=noaccess\n")
    detector = ProcDetector(str(proc), scan=functools.partial(scan_proc, mountinfo_path=str(mountinfo)))
    detection = detector.detect_domain("default_vm", None)
    assert detection.error == "permission_denied"
    assert "no gid=" in detection.detail


_DETECT_AS_CHILD = """
import json, sys
from otel_vmi_hv.detection.proc.detector import ProcDetector
d = ProcDetector(sys.argv[1]).detect_domain("default_vm", None)
print(json.dumps([d.error, d.detail]))
"""


def test_refused_reads_without_hidepid_point_at_a_security_module() -> None:
    """Files this reader may not open, on a /proc that is no hidepid mount (as SELinux denials look)."""
    base = Path(tempfile.mkdtemp(prefix="ovh-proc-refused-"))
    try:
        base.chmod(0o755)
        proc = write_proc_tree(base / "proc", [FakeProcess(60, "qemu-kvm")])
        for name in ("comm", "cmdline"):
            (proc / "60" / name).chmod(0)
        argv = [sys.executable, "-c", _DETECT_AS_CHILD, str(proc)]
        if os.geteuid() == 0:  # root reads any file: run the detector as another user
            argv = ["setpriv", "--reuid=65532", "--regid=65532", "--clear-groups", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/", check=False)
        assert result.returncode == 0, result.stderr
        error, detail = json.loads(result.stdout)
        assert error == "permission_denied"
        assert "not a hidepid mount" in detail
    finally:
        shutil.rmtree(base)


def test_missing_proc_root_is_unknown_not_an_exception(tmp_path: Path) -> None:
    detection = ProcDetector(str(tmp_path / "absent")).detect_domain("default_vm", None)
    assert (detection.hypervisor_type, detection.error) == (UNKNOWN, "unreadable")
    assert str(tmp_path / "absent") in detection.detail


def test_a_failing_pass_costs_one_unknown(tmp_path: Path) -> None:
    proc = write_proc_tree(
        tmp_path / "proc",
        [
            FakeProcess(
                50,
                "qemu-kvm",
                ("/usr/libexec/qemu-kvm", "-name", "guest=a_b,debug-threads=on"),
                threads=("CPU 0/KVM",),
            )
        ],
    )
    calls: list[int] = []

    def flaky(root: str) -> ProcScan:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return scan_proc(root)

    detector = ProcDetector(str(proc), scan=flaky)
    assert detector.detect_domain("a_b", None).error == "unreadable"
    assert detector.detect_domain("a_b", None).hypervisor_type == "kvm"


def test_process_exiting_during_the_pass_is_skipped(tmp_path: Path) -> None:
    # A pid directory whose files are gone (the process exited between listdir and the reads).
    proc = write_proc_tree(tmp_path / "proc", [])
    (proc / "777").mkdir()
    scan = scan_proc(str(proc))
    assert scan.processes == () and not scan.hidden


# ------------------------------------------------------------------------ shared passes over /proc


class GatedScan:
    """A counting scan: pass 1 reads the tree, then blocks until ``release`` (so the test decides
    who arrives while it runs); later passes run straight through."""

    def __init__(self) -> None:
        self.count = 0
        self.first_read = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, root: str) -> ProcScan:
        with self._lock:
            self.count += 1
            number = self.count
        scan = scan_proc(root)
        if number == 1:
            self.first_read.set()
            assert self.release.wait(30), "test never released the first pass"
        return scan


def waiting_callers(caplog: pytest.LogCaptureFixture) -> int:
    """Callers that found a pass running and wait for the next one, as the detector's debug log says."""
    return sum("waiting for the next pass" in record.getMessage() for record in caplog.records)


def test_callers_arriving_during_a_pass_share_the_next_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="otel_vmi_hv.detection.proc.detector")
    proc = write_proc_tree(tmp_path / "proc", [])
    gate = GatedScan()
    detector = ProcDetector(str(proc), scan=gate)
    results: dict[str, str] = {}

    def call(who: str) -> None:
        results[who] = detector.detect_domain("default_vm", None).hypervisor_type

    first = threading.Thread(target=call, args=("first",))
    first.start()
    assert gate.first_read.wait(10)
    # The QEMU starts after pass 1 read /proc; two callers arrive while pass 1 still runs.
    write_process(
        proc,
        FakeProcess(4242, "qemu-kvm", ("/usr/libexec/qemu-kvm", "-name", "guest=default_vm,debug-threads=on"),
                    threads=("CPU 0/KVM",)),
    )  # fmt: skip
    late = [threading.Thread(target=call, args=(f"late{i}",)) for i in range(2)]
    for thread in late:
        thread.start()
    wait_until(lambda: waiting_callers(caplog) == 2, 10, "the two late callers waiting")
    gate.release.set()
    for thread in (first, *late):
        thread.join(10)
    # The first caller got the pass it started; the late ones never reused it (it missed the
    # QEMU) but shared one new pass that saw it.
    assert results == {"first": UNKNOWN, "late0": "kvm", "late1": "kvm"}
    assert gate.count == 2


def test_a_caller_after_a_finished_pass_gets_a_new_one(tmp_path: Path) -> None:
    proc = write_proc_tree(tmp_path / "proc", [])
    counted: list[str] = []

    def counting(root: str) -> ProcScan:
        counted.append(root)
        return scan_proc(root)

    detector = ProcDetector(str(proc), scan=counting)
    for _ in range(3):
        detector.detect_domain("default_vm", None)
    assert len(counted) == 3


def test_many_concurrent_callers_cost_at_most_two_passes_each_wave(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="otel_vmi_hv.detection.proc.detector")
    proc = write_proc_tree(tmp_path / "proc", [])
    gate = GatedScan()
    detector = ProcDetector(str(proc), scan=gate)
    threads = [threading.Thread(target=detector.detect_domain, args=(f"ns_vm-{i}", None)) for i in range(20)]
    threads[0].start()
    assert gate.first_read.wait(10)
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: waiting_callers(caplog) == 19, 10, "nineteen callers waiting")
    gate.release.set()
    for thread in threads:
        thread.join(10)
    assert gate.count == 2


# ------------------------------------------------------------------------------ parsing corners


def test_cgroup_naming_two_pods_is_not_trusted() -> None:
    text = (
        "4:pids:/kubepods/pod11111111-1111-4111-8111-111111111111/a\n"
        "0::/kubepods/pod22222222-2222-4222-8222-222222222222/b\n"
    )
    assert pod_uid_from_cgroup(text) is None


def test_cgroup_without_a_pod() -> None:
    assert pod_uid_from_cgroup("0::/system.slice/libvirtd.service\n") is None
    assert pod_uid_from_cgroup("0::/\n") is None


def test_mountinfo_with_escaped_mount_point() -> None:
    line = "310 22 0:5 / /host\\040proc rw - proc proc rw,hidepid=invisible,gid=7\n"
    options = proc_mount_options(line, "/host proc")
    assert options is not None and options.restricted and options.gid == 7
