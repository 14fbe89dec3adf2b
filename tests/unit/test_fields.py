"""Reading untrusted API objects: absent levels and wrong types give None, never an exception."""

from __future__ import annotations

from collections.abc import Mapping

from otel_vmi_hv.fields import field, typed

POD = {"metadata": {"uid": "u-1", "labels": None}, "spec": {"containers": [{"name": "compute"}, "junk"]}}


def test_a_present_path_gives_its_value() -> None:
    assert field(POD, "metadata", "uid") == "u-1"
    assert field(POD, "spec", "containers", 0, "name") == "compute"
    assert field(POD, "spec", "containers", -1) == "junk"


def test_absent_levels_and_wrong_types_give_none() -> None:
    assert field(POD, "status", "phase") is None
    assert field(POD, "metadata", "labels", "app") is None
    assert field(POD, "spec", "containers", 5) is None
    assert field(POD, "spec", "containers", 1, "name") is None
    assert field("not an object", "metadata") is None
    assert field(POD, "metadata", 0) is None


def test_typed_refuses_a_value_of_another_type() -> None:
    assert typed(POD, str, "metadata", "uid") == "u-1"
    assert typed(POD, Mapping, "metadata") == {"uid": "u-1", "labels": None}
    assert typed(POD, str, "spec") is None
    assert typed(POD, int, "metadata", "uid") is None
