"""The VMI's SoftwareEmulation condition, as the interpreter carries it to the tracker."""

from __future__ import annotations

from typing import Any

from otel_vmi_hv.sources.kubernetes import VMIInterpreter
from tests.fakes.kubevirt_objects import make_vmi, with_software_emulation

NODE = "worker-1"
interpret = VMIInterpreter(NODE, "test:///{pod_uid}", "/pods")


def test_condition_true_is_carried() -> None:
    vmi = interpret(with_software_emulation(make_vmi("ci", "arm", NODE), guest="arm64"))
    assert vmi is not None and vmi.software_emulation is not None
    assert vmi.software_emulation.reason == "CrossArchitectureEmulation"
    assert "guest=arm64" in vmi.software_emulation.message


def test_condition_false_or_absent_is_none() -> None:
    plain = interpret(make_vmi("ci", "x86", NODE))
    assert plain is not None and plain.software_emulation is None
    obj: dict[str, Any] = with_software_emulation(make_vmi("ci", "x86", NODE))
    obj["status"]["conditions"][-1]["status"] = "False"
    gone = interpret(obj)
    assert gone is not None and gone.software_emulation is None


def test_a_condition_change_makes_a_different_vmi() -> None:
    """The tracker compares VMIs: the condition appearing must make them unequal."""
    before = interpret(make_vmi("ci", "arm", NODE))
    after = interpret(with_software_emulation(make_vmi("ci", "arm", NODE)))
    assert before is not None and after is not None
    assert before.key == after.key and before != after


def test_malformed_conditions_are_ignored() -> None:
    obj: dict[str, Any] = make_vmi("ci", "odd", NODE)
    obj["status"]["conditions"] = ["SoftwareEmulation", {"type": "SoftwareEmulation"}, None]
    vmi = interpret(obj)
    assert vmi is not None and vmi.software_emulation is None
