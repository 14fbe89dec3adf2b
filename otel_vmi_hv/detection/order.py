"""The order in which a VMI's hypervisor type is asked for: /proc, then libvirt, then the domain file.

``proc`` goes first when it is on: it reads the running QEMU's own vCPU thread names, makes no RPC
and cannot hang. The libvirt socket (and behind it the launcher's domain file, see
``domain_detector``) is asked when /proc gave no answer, or always by ``detect``, which compares the
two: QEMU calls its thread names "not a stable API", so where both answered and disagree, libvirt's
answer is reported and the disagreement is logged and counted.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from otel_vmi_hv.model import UNKNOWN, VMI, Detection, DetectionMethod

if TYPE_CHECKING:
    from otel_vmi_hv.detection.libvirt.domain import DomainDetector
    from otel_vmi_hv.detection.proc.detector import ProcDetector
    from otel_vmi_hv.export.telemetry import Recorder

log = logging.getLogger(__name__)


class DetectionOrder:
    def __init__(
        self,
        libvirt: DomainDetector | None,
        proc: ProcDetector | None,
        metrics: Recorder,
        *,
        ask_both: bool = False,
    ) -> None:
        self._libvirt = libvirt
        self._proc = proc
        self._metrics = metrics
        self._ask_both = ask_both

    def detect(self, vmi: VMI) -> Detection:
        from_proc = None
        if self._proc is not None:
            from_proc = self._proc.detect(vmi.target.domain_name, vmi.target.pod_uid)
            if from_proc.pending or (from_proc.ok and not self._ask_both):
                return from_proc
        if self._libvirt is None:
            return from_proc or Detection(
                UNKNOWN, DetectionMethod.NONE, "no_method", "no detection method is on"
            )
        from_libvirt = self._libvirt.detect(vmi.target)
        if from_proc is None or (from_libvirt.ok and not from_proc.ok):
            return from_libvirt
        if from_proc.ok and not from_libvirt.ok:
            return from_proc
        if from_proc.ok:  # both answered
            if from_proc.hypervisor_type == from_libvirt.hypervisor_type:
                return from_libvirt
            log.warning(
                "%s/%s: /proc says %s but libvirt says %s; reporting libvirt's",
                vmi.namespace,
                vmi.name,
                from_proc.hypervisor_type,
                from_libvirt.hypervisor_type,
            )
            self._metrics.record_mismatch()
            return dataclasses.replace(from_libvirt, mismatch=from_proc.hypervisor_type)
        # Neither answered: libvirt's reason, with what /proc said beside it.
        detail = f"{from_libvirt.detail}; proc: {from_proc.error}: {from_proc.detail}".lstrip("; ")
        return dataclasses.replace(from_libvirt, detail=detail)
