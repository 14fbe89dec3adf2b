"""Tracker rules: one detection per lifetime, retries for unknown, no stale rows after removal."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.model import UNKNOWN, VMI, Detection, DetectionMethod, LibvirtTarget
from otel_vmi_hv.tracker import Tracker
from tests.agent_process import wait_until


def vmi(name: str, lifetime: str = "pod-1", namespace: str = "default") -> VMI:
    return VMI(f"uid-{name}", namespace, name, LibvirtTarget("test:///x", f"{namespace}_{name}", lifetime))


class ScriptedDetector:
    """Answers per domain from a table the test changes; counts calls per lifetime."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.calls: Counter[tuple[str, str]] = Counter()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, item: VMI) -> Detection:
        self.gate.wait()
        self.calls[(item.target.domain_name, item.target.lifetime_key)] += 1
        answer = self.answers.get(item.target.domain_name, UNKNOWN)
        if answer == UNKNOWN:
            return Detection(UNKNOWN, DetectionMethod.NONE, "timeout")
        return Detection(answer, DetectionMethod.LIBVIRT)


@pytest.fixture
def detector() -> ScriptedDetector:
    return ScriptedDetector()


@pytest.fixture
def make_tracker(detector: ScriptedDetector) -> Iterator[Callable[..., Tracker]]:
    trackers: list[Tracker] = []

    def make(**kwargs: object) -> Tracker:
        tracker = Tracker(detector, "node-1", **kwargs)  # type: ignore[arg-type]
        tracker.start()
        trackers.append(tracker)
        return tracker

    yield make
    for tracker in trackers:
        tracker.stop()


def rows(tracker: Tracker) -> dict[str, str]:
    return {row.name: row.hypervisor_type for row in tracker.publish().series}


def test_detects_once_per_lifetime_and_publishes(detector: ScriptedDetector, make_tracker) -> None:
    detector.answers["default_a"] = "kvm"
    tracker = make_tracker()
    for _ in range(3):
        tracker.upsert(vmi("a"))
    wait_until(lambda: rows(tracker) == {"a": "kvm"}, 5, "a detected")
    assert tracker.wait_idle(5)
    tracker.upsert(vmi("a"))
    assert tracker.wait_idle(5)
    assert detector.calls[("default_a", "pod-1")] == 1


def test_new_lifetime_is_detected_again_and_old_type_shown_meanwhile(
    detector: ScriptedDetector, make_tracker
) -> None:
    detector.answers["default_a"] = "qemu-tcg"
    tracker = make_tracker()
    tracker.upsert(vmi("a", "pod-1"))
    wait_until(lambda: rows(tracker) == {"a": "qemu-tcg"}, 5, "first lifetime")
    detector.gate.clear()
    detector.answers["default_a"] = "kvm"
    tracker.upsert(vmi("a", "pod-2"))  # migrated: a new launcher pod
    assert rows(tracker) == {"a": "qemu-tcg"}, "no gap while the new launcher is detected"
    detector.gate.set()
    wait_until(lambda: rows(tracker) == {"a": "kvm"}, 5, "second lifetime")
    assert detector.calls[("default_a", "pod-2")] == 1


def test_unknown_is_published_and_retried_until_it_resolves(
    detector: ScriptedDetector, make_tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("otel_vmi_hv.tracker.RETRY", Backoff(initial=0.05, maximum=0.05))
    tracker = make_tracker()
    tracker.upsert(vmi("b"))
    wait_until(lambda: rows(tracker) == {"b": UNKNOWN}, 5, "b unknown")
    wait_until(lambda: detector.calls[("default_b", "pod-1")] >= 2, 5, "a retry")
    detector.answers["default_b"] = "kvm"
    wait_until(lambda: rows(tracker) == {"b": "kvm"}, 5, "b resolved by retry")


def test_retry_unknown_skips_the_backoff(detector: ScriptedDetector, make_tracker) -> None:
    tracker = make_tracker()
    tracker.upsert(vmi("c"))
    wait_until(lambda: rows(tracker) == {"c": UNKNOWN}, 5, "c unknown")
    detector.answers["default_c"] = "kvm"
    assert tracker.retry_unknown("test:///x") == 1
    wait_until(lambda: rows(tracker) == {"c": "kvm"}, 2, "c re-detected at once")


def test_removed_vmi_disappears_even_if_its_detection_finishes_later(
    detector: ScriptedDetector, make_tracker
) -> None:
    detector.answers["default_d"] = "kvm"
    detector.gate.clear()
    tracker = make_tracker()
    tracker.upsert(vmi("d"))
    wait_until(lambda: tracker.publish().pending == 1, 5, "pending detection")
    tracker.remove("uid-d")
    detector.gate.set()
    assert tracker.wait_idle(5)
    assert rows(tracker) == {}


def test_replace_all_reconciles(detector: ScriptedDetector, make_tracker) -> None:
    detector.answers.update({"default_e": "kvm", "default_f": "kvm", "default_g": "qemu-tcg"})
    tracker = make_tracker()
    tracker.replace_all([vmi("e"), vmi("f")])
    wait_until(lambda: rows(tracker) == {"e": "kvm", "f": "kvm"}, 5, "e and f")
    tracker.replace_all([vmi("f"), vmi("g")])
    wait_until(lambda: rows(tracker) == {"f": "kvm", "g": "qemu-tcg"}, 5, "f and g only")
    assert detector.calls[("default_f", "pod-1")] == 1


def test_snapshot_version_changes_only_with_content(detector: ScriptedDetector, make_tracker) -> None:
    detector.answers["default_h"] = "kvm"
    tracker = make_tracker()
    tracker.upsert(vmi("h"))
    wait_until(lambda: rows(tracker) == {"h": "kvm"}, 5, "h")
    version = tracker.publish().version
    tracker.upsert(vmi("h"))
    assert tracker.publish().version == version
    tracker.remove("uid-h")
    assert tracker.publish().version == version + 1
