"""Detection method ``proc``: a VMI's hypervisor type from its running QEMU's vCPU thread names.

Why: reading libvirt needs a socket (root with CAP_DAC_OVERRIDE in KubeVirt) or the launcher's
domain file; ``/proc/<pid>/task/<tid>/comm`` is readable by any user and names the accelerator the
vCPU really runs on. No RPC is made, so nothing can hang.

Cost: one pass over /proc serves every caller waiting at that moment. A caller that arrives while
a pass is running waits for the next pass that starts after its arrival (the running one may have
read /proc before its QEMU existed), and all callers waiting together share that pass.

Answers (``Detection`` with method ``proc``):

- success: ``hypervisor_type`` from the threads (KVM -> kvm, TCG -> qemu-tcg, MSHV -> mshv, others
  lower-cased), ``error`` "";
- ``error == "pending"`` (``PENDING``), ``hypervisor_type`` unknown: the QEMU exists but has no
  vCPU thread yet (its first milliseconds, or ``--preconfig``); retry soon, do not count it failed;
- ``unknown`` with a reason: ``no_process``, ``permission_denied`` (hidepid; the detail names the
  ``gid=`` group to join), ``ambiguous``, ``no_thread_names``, ``unreadable``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from otel_vmi_hv.detection.proc.parse import hypervisor_type_for_accelerator
from otel_vmi_hv.detection.proc.scan import ProcScan, QemuProcess, scan_proc
from otel_vmi_hv.model import PENDING, UNKNOWN, VMI, Detection, DetectionMethod

log = logging.getLogger(__name__)

NO_PROCESS = "no_process"
PERMISSION_DENIED = "permission_denied"
AMBIGUOUS = "ambiguous"
NO_THREAD_NAMES = "no_thread_names"
UNREADABLE = "unreadable"


def is_pending(detection: Detection) -> bool:
    """True for the answer "QEMU found, no vCPU thread yet": retry shortly, it is not a failure."""
    return detection.method is DetectionMethod.PROC and detection.pending


def _unknown(reason: str, detail: str) -> Detection:
    return Detection(UNKNOWN, DetectionMethod.PROC, reason, detail)


def _hidden_hint(scan: ProcScan) -> str:
    mount = scan.mount
    if mount is None or not mount.restricted:
        return (
            f"{scan.refused} reads in {scan.proc_root} were refused and it is not a hidepid mount: "
            "a security module (SELinux, AppArmor) may deny reading other containers' processes"
        )
    where = f"{scan.proc_root} is mounted with hidepid={mount.hidepid}"
    if mount.gid is not None:
        return (
            f"{where}: other users' processes are hidden; add group {mount.gid} (the mount's gid=) "
            "to the agent's supplemental groups"
        )
    return (
        f"{where} and no gid= option: other users' processes are hidden; remount it with "
        "gid=<group> and add that group to the agent's supplemental groups"
    )


def _classify(process: QemuProcess, where: str) -> Detection:
    if not process.accelerators:
        if not process.thread_names_enabled:
            return _unknown(
                NO_THREAD_NAMES,
                f"{where} runs without -name debug-threads=on: its vCPU threads are never named",
            )
        return Detection(UNKNOWN, DetectionMethod.PROC, PENDING, f"{where} has no vCPU thread yet")
    kinds = sorted(set(process.accelerators))
    if len(kinds) > 1:  # QEMU runs one accelerator; two mean the names cannot be trusted
        return _unknown(AMBIGUOUS, f"{where} has vCPU threads of several accelerators: {kinds}")
    accelerator = kinds[0]
    threads = len(process.accelerators)
    return Detection(
        hypervisor_type_for_accelerator(accelerator),
        DetectionMethod.PROC,
        detail=f"{where}, {threads} vCPU thread{'s' if threads != 1 else ''} named */{accelerator}",
    )


def detect_in_scan(scan: ProcScan, domain_name: str, pod_uid: str | None) -> Detection:
    """The answer for one domain from a finished pass (pure, so it can be tested on any scan).

    With ``pod_uid`` (KubeVirt) only a QEMU in that pod's cgroup counts, so a migration's other
    launcher on the same node is never taken for this one.
    """
    if scan.error:
        return _unknown(UNREADABLE, scan.error)
    named = scan.by_domain.get(domain_name, [])
    candidates = named if pod_uid is None else [p for p in named if p.pod_uid == pod_uid]
    if len(candidates) > 1:
        pids = ", ".join(str(p.pid) for p in candidates)
        return _unknown(AMBIGUOUS, f"several QEMU processes run domain {domain_name!r}: pids {pids}")
    if candidates:
        process = candidates[0]
        return _classify(process, f"QEMU pid {process.pid} ({scan.proc_root}/{process.pid})")
    if scan.hidden:
        return _unknown(PERMISSION_DENIED, _hidden_hint(scan))
    others = ", ".join(f"pid {p.pid} in pod {p.pod_uid or '(none)'}" for p in named)
    detail = f"no QEMU process runs domain {domain_name!r} in {scan.proc_root}"
    if pod_uid is not None:
        detail += f" in pod {pod_uid}"
    if others:
        detail += f" (other launchers: {others})"
    return _unknown(NO_PROCESS, detail)


@dataclass(slots=True)
class _Pass:
    """The outcome of pass number ``number`` (1-based)."""

    number: int
    scan: ProcScan


class ProcDetector:
    """Detects from ``proc_root`` (the host's /proc); ``detect`` is safe from many threads at once.

    ``scan`` reads the tree; tests pass a counting or gated wrapper of ``scan_proc`` to see how
    passes are shared.
    """

    def __init__(self, proc_root: str, *, scan: Callable[[str], ProcScan] = scan_proc) -> None:
        self.proc_root = proc_root
        self._scan = scan
        self._cond = threading.Condition()
        self._started = 0  # passes started so far
        self._running = False
        self._last: _Pass | None = None
        self._waiting = 0

    @property
    def passes_started(self) -> int:
        """How many passes over /proc have been started (for tests, logs and self-metrics)."""
        with self._cond:
            return self._started

    @property
    def callers_waiting(self) -> int:
        """Callers currently waiting for a pass (the one running, or the next)."""
        with self._cond:
            return self._waiting

    def detect(self, vmi: VMI) -> Detection:
        return self.detect_domain(vmi.target.domain_name, vmi.target.pod_uid)

    def detect_domain(self, domain_name: str, pod_uid: str | None = None) -> Detection:
        """The hypervisor type of the QEMU running ``domain_name`` (in pod ``pod_uid``); never raises."""
        try:
            scan = self._fresh_scan()
        except Exception as error:  # a bug must cost one unknown, not the detector thread
            log.exception("%s: proc scan of %s failed", _vmi(domain_name), self.proc_root)
            return _unknown(UNREADABLE, f"scan of {self.proc_root} failed: {error}")
        detection = detect_in_scan(scan, domain_name, pod_uid)
        log.debug(
            "%s: proc detection gave %s %s (%s)",
            _vmi(domain_name),
            detection.hypervisor_type,
            detection.error or "ok",
            detection.detail,
        )
        return detection

    def _fresh_scan(self) -> ProcScan:
        """A pass that started after this call began: run one, or join the next one."""
        with self._cond:
            wanted = self._started + 1
            self._waiting += 1
            try:
                while True:
                    last = self._last
                    if last is not None and last.number >= wanted:
                        return last.scan
                    if not self._running:
                        return self._run_pass()
                    self._cond.wait()
            finally:
                self._waiting -= 1

    def _run_pass(self) -> ProcScan:
        """Run a pass with the lock released; publish it to every waiter. Called holding the lock."""
        self._running = True
        self._started += 1
        number = self._started
        scan: ProcScan | None = None
        try:
            self._cond.release()
            try:
                scan = self._scan(self.proc_root)
            finally:
                self._cond.acquire()
        finally:
            self._running = False
            if scan is None:  # the pass raised: waiters must not wait for it forever
                scan = ProcScan(self.proc_root, error=f"scan of {self.proc_root} failed")
            self._last = _Pass(number, scan)
            self._cond.notify_all()
        return scan


def _vmi(domain_name: str) -> str:
    """``namespace/name`` for KubeVirt's ``<namespace>_<name>`` domains, as every log line says it."""
    namespace, sep, name = domain_name.partition("_")
    return f"{namespace}/{name}" if sep else domain_name
