"""Learns one domain's hypervisor type: its live XML over libvirt, else the launcher's domain file.

Never raises: every way of failing becomes a ``Detection`` of ``unknown`` with a bounded reason
(the label of the errors self-metric) and a detail for `detect` and the log.
"""

from __future__ import annotations

import errno
import os
import stat

from otel_vmi_hv.detection.libvirt.calls import LibvirtCalls
from otel_vmi_hv.detection.libvirt.daemons import LibvirtUnavailable
from otel_vmi_hv.detection.libvirt.domain_xml import MAX_DOMAIN_XML_BYTES, parse_domain_type
from otel_vmi_hv.model import UNKNOWN, VMI, Detection, DetectionMethod, FailureReason, LibvirtTarget


class DomainDetector:
    def __init__(self, calls: LibvirtCalls) -> None:
        self._calls = calls

    def detect(self, vmi: VMI) -> Detection:
        return self.detect_target(vmi.target)

    def detect_target(self, target: LibvirtTarget) -> Detection:
        if not target.uri:  # an empty URI would make libvirt pick a default daemon: never that
            return _unknown(FailureReason.NO_LAUNCHER_POD, "no launcher pod on this node")
        if "\x00" in target.domain_name:  # libvirt cannot even be asked; retrying would not help
            return _unknown(FailureReason.INVALID_NAME, "the domain name contains NUL")
        try:
            xml = self._calls.call(target.uri, lambda conn: conn.lookupByName(target.domain_name).XMLDesc(0))
        except LibvirtUnavailable as failure:
            if target.domain_file is not None and failure.reason is not FailureReason.NO_DOMAIN:
                return _detect_from_file(target.domain_file, failure)
            return _unknown(failure.reason, failure.detail)
        parsed = parse_domain_type(xml)
        if parsed.error:
            raw_type = f": type {parsed.raw_type!r}" if parsed.raw_type else ""
            return _unknown(parsed.error, f"domain {target.domain_name}{raw_type}")
        return Detection(parsed.hypervisor_type, DetectionMethod.LIBVIRT)


def _unknown(reason: FailureReason, detail: str) -> Detection:
    return Detection(UNKNOWN, DetectionMethod.NONE, reason, detail)


def _detect_from_file(path: str, failure: LibvirtUnavailable) -> Detection:
    try:
        data = _read_regular_file(path, MAX_DOMAIN_XML_BYTES + 1)
    except OSError as error:
        return _unknown(failure.reason, f"{failure.detail}; domain file {path}: {error.strerror}")
    parsed = parse_domain_type(data)
    if parsed.error:
        return _unknown(parsed.error, f"domain file {path}")
    return Detection(parsed.hypervisor_type, DetectionMethod.DOMAIN_FILE, detail=failure.reason)


def _read_regular_file(path: str, limit: int) -> bytes:
    """Read at most ``limit`` bytes of a regular file, refusing anything that could block.

    The launcher's domain file lives where the VM's own user can write: a FIFO or device put in
    its place must not hang a detection worker, and a symlink must not lead elsewhere.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limit)
    finally:
        os.close(fd)
