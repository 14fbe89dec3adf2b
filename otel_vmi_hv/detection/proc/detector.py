"""Detection method ``proc``: a VMI's hypervisor type from its running QEMU's vCPU thread names.

Why: reading libvirt needs a socket (root with CAP_DAC_OVERRIDE in KubeVirt) or the launcher's
domain file; ``/proc/<pid>/task/<tid>/comm`` is readable by any user and names the accelerator the
vCPU really runs on. No RPC is made, so nothing can hang. One pass over /proc serves every caller
waiting at that moment; a caller that arrives while a pass runs waits for the next one (the running
one may have read /proc before its QEMU existed). A QEMU without vCPU threads yet is ``pending``,
not a failure: it is asked again soon.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from otel_vmi_hv.detection.proc.parse import hypervisor_type_for_accelerator
from otel_vmi_hv.detection.proc.scan import ProcScan, QemuProcess, scan_proc
from otel_vmi_hv.model import UNKNOWN, VMI, Detection, DetectionMethod, FailureReason

log = logging.getLogger(__name__)


def _unknown(reason: FailureReason, detail: str) -> Detection:
    return Detection(UNKNOWN, DetectionMethod.PROC, reason, detail)


def _hidden_hint(scan: ProcScan) -> str:
    mount = scan.mount
    if mount is None or not mount.restricted:
        return (
            f"{scan.refused} reads in {scan.proc_root} were refused and it is not a hidepid mount: "
            "a security module (SELinux, AppArmor) may deny reading other containers' processes"
        )
    fix = (
        f"add group {mount.gid} (the mount's gid=)"
        if mount.gid is not None
        else "no gid= option: remount it with gid=<group> and add that group"
    )
    return (
        f"{scan.proc_root} is mounted with hidepid={mount.hidepid}: other users' processes are hidden; "
        f"{fix} to the agent's supplemental groups"
    )


def _classify(process: QemuProcess, where: str) -> Detection:
    kinds = sorted(set(process.accelerators))
    if not kinds and not process.thread_names_enabled:
        why = "runs without -name debug-threads=on: its vCPU threads are never named"
        return _unknown(FailureReason.NO_THREAD_NAMES, f"{where} {why}")
    if not kinds:
        return _unknown(FailureReason.PENDING, f"{where} has no vCPU thread yet")
    if len(kinds) > 1:  # QEMU runs one accelerator; two mean the names cannot be trusted
        return _unknown(FailureReason.AMBIGUOUS, f"{where} has vCPU threads of several accelerators: {kinds}")
    threads = len(process.accelerators)
    detail = f"{where}, {threads} vCPU thread{'s' if threads != 1 else ''} named */{kinds[0]}"
    return Detection(hypervisor_type_for_accelerator(kinds[0]), DetectionMethod.PROC, detail=detail)


def detect_in_scan(scan: ProcScan, domain_name: str, pod_uid: str | None) -> Detection:
    """The answer for one domain from a finished pass (pure, so it can be tested on any scan).

    With ``pod_uid`` (KubeVirt) only a QEMU in that pod's cgroup counts, so a migration's other
    launcher on the same node is never taken for this one.
    """
    if scan.error:
        return _unknown(FailureReason.UNREADABLE, scan.error)
    named = [p for p in scan.processes if p.domain_name == domain_name]
    candidates = named if pod_uid is None else [p for p in named if p.pod_uid == pod_uid]
    if len(candidates) > 1:
        pids = ", ".join(str(p.pid) for p in candidates)
        return _unknown(FailureReason.AMBIGUOUS, f"several QEMUs run domain {domain_name!r}: pids {pids}")
    if candidates:
        process = candidates[0]
        return _classify(process, f"QEMU pid {process.pid} ({scan.proc_root}/{process.pid})")
    if scan.hidden:
        return _unknown(FailureReason.PERMISSION_DENIED, _hidden_hint(scan))
    detail = f"no QEMU process runs domain {domain_name!r} in {scan.proc_root}"
    detail += f" in pod {pod_uid}" if pod_uid is not None else ""
    others = ", ".join(f"pid {p.pid} in pod {p.pod_uid or '(none)'}" for p in named)
    detail += f" (other launchers: {others})" if others else ""
    return _unknown(FailureReason.NO_PROCESS, detail)


class ProcDetector:
    """Detects from ``proc_root`` (the host's /proc); ``detect`` is safe from many threads at once."""

    def __init__(self, proc_root: str, *, scan: Callable[[str], ProcScan] = scan_proc) -> None:
        self.proc_root = proc_root
        self._scan = scan
        self._cond = threading.Condition()
        self._started = 0  # passes started so far
        self._running = False
        self._last: tuple[int, ProcScan] | None = None  # the last finished pass: its number, its scan

    def detect(self, vmi: VMI) -> Detection:
        return self.detect_domain(vmi.target.domain_name, vmi.target.pod_uid)

    def detect_domain(self, domain_name: str, pod_uid: str | None = None) -> Detection:
        """The hypervisor type of the QEMU running ``domain_name`` (in pod ``pod_uid``); never raises."""
        try:
            scan = self._fresh_scan(domain_name)
        except Exception as error:  # a bug must cost one unknown, not the detector thread
            log.exception("%s: proc scan of %s failed", _vmi(domain_name), self.proc_root)
            return _unknown(FailureReason.UNREADABLE, f"scan of {self.proc_root} failed: {error}")
        detection = detect_in_scan(scan, domain_name, pod_uid)
        answer = detection.error or detection.hypervisor_type
        log.debug("%s: proc gave %s (%s)", _vmi(domain_name), answer, detection.detail)
        return detection

    def _fresh_scan(self, domain_name: str) -> ProcScan:
        """A pass that started after this call began: run one, or wait for the next one to end."""
        with self._cond:
            wanted = self._started + 1
            if self._running:
                log.debug("%s: waiting for the next pass over %s", _vmi(domain_name), self.proc_root)
            while self._last is None or self._last[0] < wanted:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                scan = ProcScan(self.proc_root, error=f"scan of {self.proc_root} failed")  # if it raises
                self._cond.release()  # the pass runs unlocked; callers arriving now wait for the next
                try:
                    scan = self._scan(self.proc_root)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._last = (self._started, scan)
                    self._cond.notify_all()
            return self._last[1]


def _vmi(domain_name: str) -> str:
    """``namespace/name`` for KubeVirt's ``<namespace>_<name>`` domains, as every log line says it."""
    return domain_name.replace("_", "/", 1)
