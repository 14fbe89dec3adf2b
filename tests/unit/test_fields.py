"""Reading untrusted API objects: absent levels and wrong types give None, never an exception."""

from __future__ import annotations

from otel_vmi_hv.fields import field, items, mapping, text

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


def test_typed_readers_refuse_a_value_of_another_type() -> None:
    assert text(POD, "metadata", "uid") == "u-1"
    assert text(POD, "spec") is None
    assert mapping(POD, "metadata") == {"uid": "u-1", "labels": None}
    assert mapping(POD, "metadata", "labels") == {}
    assert items(POD, "spec", "containers") == [{"name": "compute"}, "junk"]
    assert items(POD, "metadata") == []
