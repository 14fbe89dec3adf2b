"""The order in which a VMI's hypervisor type is asked for: /proc, then libvirt (and its domain file).

``proc`` goes first when it is on: it reads the running QEMU's own vCPU thread names, makes no RPC
and cannot hang. The libvirt socket (and behind it the launcher's domain file, see
``libvirt.domain``) is asked when /proc gave no answer, or always by ``detect``, which compares the
two: QEMU calls its thread names "not a stable API", so where both answered and disagree, the later
method's answer (libvirt's) is reported and the disagreement is logged and counted.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from otel_vmi_hv.interfaces import Detector, Recorder
from otel_vmi_hv.model import UNKNOWN, VMI, Detection, DetectionMethod, FailureReason

log = logging.getLogger(__name__)

NO_METHOD = Detection(UNKNOWN, DetectionMethod.NONE, FailureReason.NO_METHOD, "no detection method is on")


class DetectionOrder:
    """Asks ``detectors`` in order; the first answer wins unless ``ask_both`` asks every one."""

    def __init__(self, detectors: Sequence[Detector], metrics: Recorder, *, ask_both: bool = False) -> None:
        self._detectors = tuple(detectors)
        self._metrics = metrics
        self._ask_both = ask_both

    def detect(self, vmi: VMI) -> Detection:
        asked: list[Detection] = []
        for detector in self._detectors:
            detection = detector.detect(vmi)
            if detection.pending or (detection.ok and not self._ask_both):
                return detection  # "not yet" is asked again later; nothing else is worth asking now
            asked.append(detection)
        answers = [detection for detection in asked if detection.ok]
        if answers:
            return self._agreed(vmi, answers)
        return _failed(asked) if asked else NO_METHOD

    def _agreed(self, vmi: VMI, answers: list[Detection]) -> Detection:
        """The last method's answer; an earlier one that disagrees is logged, counted and shown."""
        *earlier, reported = answers
        other = next((d for d in earlier if d.hypervisor_type != reported.hypervisor_type), None)
        if other is None:
            return reported
        said = f"{other.method} says {other.hypervisor_type}, {reported.method} {reported.hypervisor_type}"
        log.warning("%s/%s: %s; reporting %s's", vmi.namespace, vmi.name, said, reported.method)
        self._metrics.record_mismatch()
        return dataclasses.replace(reported, mismatch=other.hypervisor_type)


def _failed(asked: list[Detection]) -> Detection:
    """No method answered: the last one's reason, with what the earlier ones said beside it."""
    last = asked[-1]
    if len(asked) == 1:
        return last
    earlier = "; ".join(f"{d.method.value}: {d.error}: {d.detail}" for d in asked[:-1])
    return dataclasses.replace(last, detail=f"{last.detail}; {earlier}".lstrip("; "))
