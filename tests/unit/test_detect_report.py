"""What `otel-vmi-hv detect` tells an operator about a failed detection."""

from __future__ import annotations

from otel_vmi_hv.detect_report import HINTS, render_table, rows
from otel_vmi_hv.model import UNKNOWN, VMI, Detection, DetectionMethod, FailureReason, LibvirtTarget


def test_every_failure_reason_has_a_hint() -> None:
    assert set(FailureReason) <= set(HINTS), "a reason `detect` would leave without advice"


def test_the_table_names_the_reason_and_its_hint_once() -> None:
    target = LibvirtTarget(uri="test:///default", domain_name="ns_vm", lifetime_key="1")
    failed = [
        (
            VMI(f"uid-{i}", "ns", f"vm-{i}", target),
            Detection(UNKNOWN, DetectionMethod.NONE, FailureReason.BUSY),
        )
        for i in range(2)
    ]
    table = render_table(rows(failed, "node-1", lambda _vmi: ("", "")))
    assert table.count(f"busy: {HINTS[FailureReason.BUSY]}") == 1
    assert all(line.split()[-1] == "busy" for line in table.splitlines()[1:3])
