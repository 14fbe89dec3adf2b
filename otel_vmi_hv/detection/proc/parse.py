"""Reading the texts /proc gives about a QEMU process: command line, cgroup, thread names, mounts.

Pure functions over strings and bytes, so every layout the kernel, systemd, the kubelet and QEMU
produce can be tested from a literal. The file system walk that feeds them is ``scan``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# QEMU names each vCPU thread after its accelerator when started with ``-name debug-threads=on``
# (libvirt always passes it): "CPU <n>/KVM" (accel/kvm/kvm-accel-ops.c), "CPU <n>/TCG" under
# multi-threaded TCG, "ALL CPUs/TCG" under round-robin TCG (accel/tcg/tcg-accel-ops-mttcg.c and
# -rr.c), "CPU <n>/MSHV", "CPU <n>/HVF", "CPU <n>/WHPX" elsewhere. QEMU calls these names "not a
# stable API", which is why libvirt stays the fallback. KubeVirt matches ^CPU (\d+)/KVM$ itself.
_VCPU_THREAD = re.compile(r"(?:CPU \d+|ALL CPUs)/([A-Za-z0-9]+)")

# The accelerator words whose label differs from the lower-cased word.
_ACCELERATOR_TYPES = {"KVM": "kvm", "TCG": "qemu-tcg", "MSHV": "mshv"}

_UUID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
# The kubelet's pod cgroup, in both cgroup drivers and every QoS class (guaranteed pods have no
# QoS part), as one path component:
#   systemd:  .../kubepods-burstable-pod<uid with '_'>.slice/...   kubepods-pod<uid>.slice
#   cgroupfs: .../kubepods/burstable/pod<uid>/...                  /kubepods/pod<uid>/...
# Anything may come before it ("/../../.." when read from inside a cgroup namespace, where even
# "kubepods/" can be cut off) or after it (the container's scope, KubeVirt's "housekeeping" child).
_POD_CGROUP = re.compile(
    rf"(?:^|/)(?:kubepods(?:-besteffort|-burstable)?-pod(?P<systemd>{_UUID})\.slice"
    rf"|pod(?P<cgroupfs>{_UUID}))(?=/|$)"
)


def is_qemu_name(name: str) -> bool:
    """Tell whether a ``comm`` or an argv[0] base name names a QEMU system emulator.

    ``comm`` is cut at 15 bytes ("qemu-system-x86"), which still carries the prefix.
    """
    return name.startswith("qemu-system-") or name == "qemu-kvm"


def _split_qemu_opts(value: str) -> list[str]:
    """Split a QEMU option string at single commas; ``,,`` is an escaped comma (NUL is in no argv)."""
    return [item.replace("\0", ",") for item in value.replace(",,", "\0").split(",")]


def parse_qemu_name(argv: list[str]) -> tuple[str | None, bool]:
    """(guest name, whether vCPU threads are named) from ``-name guest=<name>[,debug-threads=on]``.

    ``guest=`` is the option's implied key, so ``-name foo`` names the guest too. The last
    ``-name`` wins, as in QEMU.
    """
    guest: str | None = None
    debug_threads = False
    for index, arg in enumerate(argv[1:-1], start=1):
        if arg not in ("-name", "--name"):
            continue
        guest, debug_threads = None, False
        for position, item in enumerate(_split_qemu_opts(argv[index + 1])):
            key, sep, value = item.partition("=")
            if not sep:
                if position == 0:
                    guest = key
                continue
            if key == "guest":
                guest = value
            elif key == "debug-threads":
                debug_threads = value in ("on", "yes", "true")
    return guest or None, debug_threads


def pod_uid_from_cgroup(text: str) -> str | None:
    """The kubelet pod UID in ``/proc/<pid>/cgroup`` (v1 or v2, either driver), or None.

    All lines are looked at (cgroup v1 has one per hierarchy, v2 one ``0::`` line, hybrid both);
    None when no line names a pod, or when lines name different pods (nothing to trust).
    """
    found: set[str] = set()
    for line in text.splitlines():
        _, _, path = line.partition(":")
        _, _, path = path.partition(":")
        for match in _POD_CGROUP.finditer(path):
            uid = match.group("systemd") or match.group("cgroupfs")
            found.add(uid.replace("_", "-"))
    return found.pop() if len(found) == 1 else None


def vcpu_accelerator(thread_name: str) -> str | None:
    """The accelerator word of a vCPU thread name ("CPU 3/KVM" -> "KVM"), None for other threads."""
    match = _VCPU_THREAD.fullmatch(thread_name.rstrip("\n"))
    return match.group(1) if match else None


def hypervisor_type_for_accelerator(accelerator: str) -> str:
    """The ``hypervisor_type`` label for a vCPU thread's accelerator word.

    KVM, TCG and MSHV use the names libvirt's types get (``kvm``, ``qemu-tcg``, ``mshv``), so a VMI
    keeps its label whichever method detected it; other accelerators are lower-cased.
    """
    return _ACCELERATOR_TYPES.get(accelerator, accelerator.lower())


@dataclass(frozen=True, slots=True)
class ProcMountOptions:
    """The hidepid-related options of the procfs mounted at a path (from mountinfo)."""

    hidepid: str  # "0"/"off" when unrestricted; "1"/"noaccess", "2"/"invisible", "4"/"ptraceable"
    gid: int | None  # members of this group see every process

    @property
    def restricted(self) -> bool:
        return self.hidepid not in ("0", "off")


def _unescape_mount_path(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo`` octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def proc_mount_options(mountinfo: str, mount_point: str) -> ProcMountOptions | None:
    """The procfs options at ``mount_point`` from a ``/proc/self/mountinfo`` text, None if no procfs.

    The last matching line wins (the mount on top). Since Linux 5.8 each procfs instance has its
    own options, shown after the `` - proc proc `` separator as super options.
    """
    found: ProcMountOptions | None = None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if _unescape_mount_path(fields[4]) != mount_point or fields[separator + 1] != "proc":
            continue
        options = dict(item.partition("=")[::2] for item in fields[separator + 3].split(",") if item)
        gid = options.get("gid")
        found = ProcMountOptions(options.get("hidepid", "0"), int(gid) if gid and gid.isdigit() else None)
    return found
