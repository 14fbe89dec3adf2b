"""Tracker rules: one detection per lifetime, retries for unknown, no stale rows after removal."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.interfaces import Recorder
from otel_vmi_hv.model import UNKNOWN, VMI, Detection, DetectionMethod, FailureReason, LibvirtTarget
from otel_vmi_hv.tracker import Tracker
from tests.agent_process import wait_until


def vmi(name: str, lifetime: str = "pod-1", namespace: str = "default", uri: str = "test:///x") -> VMI:
    return VMI(f"uid-{name}", namespace, name, LibvirtTarget(uri, f"{namespace}_{name}", lifetime))


class CountingRecorder(Recorder):
    def __init__(self) -> None:
        self.replaced = 0

    def record_label_replaced(self) -> None:
        self.replaced += 1


class ScriptedDetector:
    """Answers per domain from a table the test changes; counts calls per lifetime."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.calls: Counter[tuple[str, str]] = Counter()
        self.gate = threading.Event()
        self.gate.set()
        self.entered: list[str] = []  # lifetimes whose detection has started

    def __call__(self, item: VMI) -> Detection:
        self.entered.append(item.target.lifetime_key)
        self.gate.wait()
        self.calls[(item.target.domain_name, item.target.lifetime_key)] += 1
        answer = self.answers.get(item.target.domain_name, UNKNOWN)
        if answer == UNKNOWN:
            return Detection(UNKNOWN, DetectionMethod.NONE, FailureReason.TIMEOUT)
        return Detection(answer, DetectionMethod.LIBVIRT)


@pytest.fixture
def detector() -> ScriptedDetector:
    return ScriptedDetector()


@pytest.fixture
def make_tracker(detector: ScriptedDetector) -> Iterator[Callable[..., Tracker]]:
    trackers: list[Tracker] = []

    def make(**kwargs: object) -> Tracker:
        kwargs.setdefault("metrics", Recorder())
        tracker = Tracker(detector, "node-1", **kwargs)  # type: ignore[arg-type]
        tracker.start()
        trackers.append(tracker)
        return tracker

    yield make
    for tracker in trackers:
        tracker.stop()


def rows(tracker: Tracker) -> dict[str, str]:
    return {row.name: row.hypervisor_type for row in tracker.snapshot().series}


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
    tracker.retry_unknown("test:///other")  # another daemon recovered: not this VMI's
    assert tracker.wait_idle(2)
    assert rows(tracker) == {"c": UNKNOWN}
    tracker.retry_unknown("test:///x")
    wait_until(lambda: rows(tracker) == {"c": "kvm"}, 2, "c re-detected at once")


def test_removed_vmi_disappears_even_if_its_detection_finishes_later(
    detector: ScriptedDetector, make_tracker
) -> None:
    detector.answers["default_d"] = "kvm"
    detector.gate.clear()
    tracker = make_tracker()
    tracker.upsert(vmi("d"))
    wait_until(lambda: tracker.snapshot().pending == 1, 5, "pending detection")
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
    version = tracker.snapshot().version
    tracker.upsert(vmi("h"))
    assert tracker.snapshot().version == version
    tracker.remove("uid-h")
    assert tracker.snapshot().version > version


def test_on_change_follows_every_change_of_the_snapshot_and_may_read_it(
    detector: ScriptedDetector, make_tracker
) -> None:
    seen: list[dict[str, str]] = []
    made: list[Tracker] = []

    def changed() -> None:  # called outside the lock: reading the snapshot here cannot deadlock
        seen.append(rows(made[0]) | {"pending": str(made[0].snapshot().pending)})

    detector.gate.clear()
    detector.answers["default_i"] = "kvm"
    tracker = make_tracker(on_change=changed)
    made.append(tracker)
    tracker.upsert(vmi("i"))
    assert seen == [{"pending": "1"}], "a new VMI (pending) is a change"
    detector.gate.set()
    wait_until(lambda: len(seen) == 2, 5, "the detection published")
    assert seen[1] == {"i": "kvm", "pending": "0"}
    tracker.upsert(vmi("i"))
    assert tracker.wait_idle(5)
    assert len(seen) == 2, "an identical upsert changes nothing"
    tracker.remove("uid-i")
    assert seen[2:] == [{"pending": "0"}]


def test_a_launcher_is_released_only_when_no_vmi_and_no_detection_needs_it(
    detector: ScriptedDetector, make_tracker
) -> None:
    released: list[str] = []
    detector.answers.update({"default_j": "kvm", "default_k": "kvm"})
    tracker = make_tracker(release=released.append)
    tracker.upsert(vmi("j", uri="launcher-1"))
    tracker.upsert(vmi("k", uri="launcher-2"))
    wait_until(lambda: rows(tracker) == {"j": "kvm", "k": "kvm"}, 5, "both")
    tracker.upsert(vmi("k", lifetime="pod-2", uri="launcher-3"))  # migrated: a new launcher
    wait_until(lambda: released == ["launcher-2"], 5, "old launcher released")
    # A detection still running when its VMI goes: released when it ends, not before.
    detector.gate.clear()
    tracker.upsert(vmi("j", lifetime="pod-9", uri="launcher-9"))
    wait_until(lambda: released == ["launcher-2", "launcher-1"], 5, "launcher-1 released")
    wait_until(lambda: "pod-9" in detector.entered, 5, "detection of launcher-9 running")
    tracker.remove("uid-j")
    assert released == ["launcher-2", "launcher-1"], "launcher-9 is still being asked"
    detector.gate.set()
    wait_until(lambda: "launcher-9" in released, 5, "released after the late detection")
    assert tracker.wait_idle(5)
    assert "launcher-3" not in released
    assert rows(tracker) == {"k": "kvm"}


def test_label_values_no_exposition_can_carry_are_replaced_and_counted(
    detector: ScriptedDetector, make_tracker
) -> None:
    recorder = CountingRecorder()
    detector.answers.update({"default_bad\x00name": "kvm", "default_ok": "kvm"})
    tracker = make_tracker(metrics=recorder)
    tracker.upsert(vmi("bad\x00name"))
    tracker.upsert(vmi("ok"))
    tracker.upsert(VMI("uid-s", "ns\udcff", "s", LibvirtTarget("test:///x", "x", "pod-1")))
    assert tracker.wait_idle(5)
    names = {(row.namespace, row.name) for row in tracker.snapshot().series}
    assert names == {("default", "bad\ufffdname"), ("default", "ok"), ("ns\ufffd", "s")}
    for row in tracker.snapshot().series:
        (row.namespace + row.name).encode("utf-8")  # encodable, whatever came in
    tracker.upsert(vmi("bad\x00name"))  # the same object again is not counted again
    assert recorder.replaced == 2


def test_a_pending_answer_is_not_reported_and_is_asked_again_soon(make_tracker) -> None:
    """A QEMU without vCPU threads yet: neither a series nor `unknown`, and no failure backoff."""
    answers = iter(
        [Detection(UNKNOWN, DetectionMethod.PROC, FailureReason.PENDING, "no vCPU thread yet")] * 3
    )

    def detect(_vmi: VMI) -> Detection:
        return next(answers, Detection("kvm", DetectionMethod.PROC))

    tracker = Tracker(detect, "node-1", metrics=Recorder())
    tracker.start()
    try:
        tracker.upsert(vmi("p"))
        assert tracker.snapshot().pending == 1
        assert rows(tracker) == {}
        # Three "not yet" answers, then the type; never an unknown series in between.
        wait_until(lambda: rows(tracker) in ({"p": "kvm"}, {"p": UNKNOWN}), 5, "p answered")
        assert rows(tracker) == {"p": "kvm"}
        assert tracker.snapshot().unknown == 0
    finally:
        tracker.stop()
