"""One pass over a /proc tree: every QEMU process with its domain name, pod UID and vCPU threads.

Why a whole pass and not a lookup by pid: nothing maps a VMI to a pid without asking libvirt, and
asking libvirt is what this method avoids. A pass reads two small files per process (``comm``,
and the start of ``cmdline`` when ``comm`` is not QEMU's) and the details of QEMU processes only,
so it stays cheap on busy nodes (see ``bench/proc_scan.py``). Processes that exit during the pass
are skipped; nothing here raises for what a live /proc does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from otel_vmi_hv.detection.proc.parse import (
    ProcMountOptions,
    is_qemu_name,
    parse_qemu_name,
    pod_uid_from_cgroup,
    proc_mount_options,
    vcpu_accelerator,
)

SELF_MOUNTINFO = "/proc/self/mountinfo"
# argv[0] sits at the start of cmdline; a path longer than this is no QEMU we would find anyway.
_ARGV0_READ = 4096
_SMALL_READ = 256
# A QEMU command line is a few KiB; cap what one process can make the agent read.
_CMDLINE_MAX = 1 << 20
_CGROUP_MAX = 64 << 10


@dataclass(frozen=True, slots=True)
class QemuProcess:
    """A running QEMU as /proc shows it."""

    pid: int
    domain_name: str | None  # from -name guest=...
    pod_uid: str | None  # the kubelet pod whose cgroup it runs in
    thread_names_enabled: bool  # -name debug-threads=on: without it vCPU threads are never named
    accelerators: tuple[str, ...]  # the accelerator word of each vCPU thread ("KVM", "TCG", ...)


@dataclass(frozen=True, slots=True)
class ProcScan:
    """The result of one pass: what was found and what may have been hidden from the reader."""

    proc_root: str
    processes: tuple[QemuProcess, ...] = ()
    mount: ProcMountOptions | None = None
    # True when processes were (or probably were) hidden from this reader: a read refused with
    # EACCES, or a hidepid mount that hides pid 1. Then "no QEMU found" proves nothing.
    hidden: bool = False
    refused: int = 0  # reads refused with EACCES/EPERM during the pass
    error: str = ""  # the root itself could not be listed


class _Reader:
    """File reads that tell "gone" (None) from "refused" (counted), never raising either."""

    def __init__(self) -> None:
        self.refused = 0

    def read(self, path: str, limit: int) -> str | None:
        try:
            with open(path, "rb") as file:  # buffered: reads until ``limit`` or the end
                return os.fsdecode(file.read(limit))
        except PermissionError:
            self.refused += 1
        except OSError:  # ENOENT, ESRCH: the process or thread is gone
            pass
        return None

    def listdir(self, path: str) -> list[str]:
        try:
            return os.listdir(path)
        except PermissionError:
            self.refused += 1
        except OSError:
            pass
        return []


def _read_process(reader: _Reader, proc_root: str, pid: int) -> QemuProcess | None:
    pid_dir = f"{proc_root}/{pid}"
    # Its ``comm``, else its argv[0]'s base name, names a QEMU system emulator.
    comm = reader.read(f"{pid_dir}/comm", _SMALL_READ)
    if comm is None or not is_qemu_name(comm.rstrip("\n")):
        head = reader.read(f"{pid_dir}/cmdline", _ARGV0_READ)
        if head is None or not is_qemu_name(os.path.basename(head.partition("\0")[0])):
            return None
    cmdline = reader.read(f"{pid_dir}/cmdline", _CMDLINE_MAX)
    if cmdline is None:
        return None  # exited in between
    guest, debug_threads = parse_qemu_name(cmdline.removesuffix("\0").split("\0"))
    cgroup = reader.read(f"{pid_dir}/cgroup", _CGROUP_MAX)
    tids = sorted((tid for tid in reader.listdir(f"{pid_dir}/task") if tid.isdigit()), key=int)
    names = [reader.read(f"{pid_dir}/task/{tid}/comm", _SMALL_READ) for tid in tids]
    return QemuProcess(
        pid=pid,
        domain_name=guest,
        pod_uid=pod_uid_from_cgroup(cgroup) if cgroup is not None else None,
        thread_names_enabled=debug_threads,
        accelerators=tuple(filter(None, map(vcpu_accelerator, filter(None, names)))),
    )


def scan_proc(proc_root: str, *, mountinfo_path: str = SELF_MOUNTINFO) -> ProcScan:
    """Walk ``proc_root`` once and return every QEMU process found, never raising.

    ``mountinfo_path`` is where the reader's own mount table is (tests point it at a fixture);
    it tells whether ``proc_root`` is a procfs mounted with ``hidepid``.
    """
    reader = _Reader()
    try:
        entries = os.listdir(proc_root)
    except OSError as error:
        return ProcScan(proc_root, error=f"cannot list {proc_root}: {error.strerror or error}")
    try:
        with open(mountinfo_path, encoding="utf-8", errors="replace") as file:
            mount = proc_mount_options(file.read(), os.path.realpath(proc_root))
    except OSError:
        mount = None
    pids = sorted(int(entry) for entry in entries if entry.isdigit())
    processes = tuple(filter(None, (_read_process(reader, proc_root, pid) for pid in pids)))
    # pid 1 always exists in a host (or any pid-namespace) procfs and is root's: hidepid hides it
    # from everyone outside the gid= group, so its absence is the tell of an "invisible" mount.
    hides_init = mount is not None and mount.restricted and "1" not in entries
    return ProcScan(
        proc_root, processes, mount, hidden=reader.refused > 0 or hides_init, refused=reader.refused
    )
