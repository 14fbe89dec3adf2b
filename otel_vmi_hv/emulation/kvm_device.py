"""Whether this host can give a VM hardware acceleration: open the KVM device and ask its API version.

On a plain libvirt host nothing else says why a domain runs under TCG: a domain of type ``qemu``
on a host with a working ``/dev/kvm`` was configured that way; without one, it had no choice.
Opening the device creates nothing (a VM needs ``KVM_CREATE_VM``), so the probe is harmless.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO=0xAE, 0x00)
KVM_API_VERSION = 12  # the only version Linux has ever answered since 2.6.22


@dataclass(frozen=True, slots=True)
class KvmState:
    """``available`` is None when the probe itself could not tell; ``detail`` says what was seen."""

    available: bool | None
    detail: str


def _unusable(path: str, code: int) -> KvmState | None:
    """What an errno from opening or asking the device means to an operator (None: not a KVM verdict)."""
    if code == errno.ENOENT:
        return KvmState(False, f"{path} is missing (no KVM module loaded, or no hardware virtualization)")
    if code in (errno.ENODEV, errno.ENXIO):
        return KvmState(False, f"{path} exists but no driver answers it (the KVM module is not loaded)")
    if code in (errno.EACCES, errno.EPERM):
        return KvmState(False, f"no permission to open {path} (device mode, group or container device rules)")
    if code in (errno.ENOTTY, errno.EINVAL):
        return KvmState(False, f"{path} is not a KVM device (KVM_GET_API_VERSION refused)")
    return None


def probe_kvm_device(path: str) -> KvmState:
    """Open ``path`` and ask ``KVM_GET_API_VERSION``; a usable device answers 12."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as error:
        return _unusable(path, error.errno or 0) or KvmState(None, f"cannot open {path}: {error.strerror}")
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as error:
        failed = KvmState(None, f"KVM_GET_API_VERSION on {path} failed: {error.strerror}")
        return _unusable(path, error.errno or 0) or failed
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return KvmState(False, f"{path} answers KVM API version {version}, not {KVM_API_VERSION}")
    return KvmState(True, f"{path} is usable (KVM API version {version})")
