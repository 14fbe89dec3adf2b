"""Joins the VMIs a source reports with their detections and publishes immutable snapshots.

Sources say what should be reported (upsert/remove/replace_all); a few workers detect each new
domain lifetime once, with retries; metric callbacks read the resulting tuple of rows without a
lock. The tracker is also the one place that knows when a libvirt URI stops mattering (no VMI uses
it, no detection for it runs): only then is ``release`` called, so a late detection of a VMI that
already left cannot leave daemon state behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.delay_queue import DelayQueue
from otel_vmi_hv.interfaces import Recorder, Snapshot
from otel_vmi_hv.model import (
    EMULATED,
    UNKNOWN,
    VMI,
    Detection,
    DetectionMethod,
    FailureReason,
    Series,
    encodable_label,
    printable,
)
from otel_vmi_hv.worker import Worker, stop_all

log = logging.getLogger(__name__)

RETRY = Backoff(initial=1.0, maximum=60.0)
PENDING_RETRY = Backoff(initial=0.2, maximum=5.0)  # a QEMU about to name its vCPU threads
DEFAULT_WORKERS = 4


@dataclass(slots=True)
class _Entry:
    vmi: VMI
    labels: tuple[str, str]  # (namespace, name) as exported: encodable
    detection: Detection | None = None  # latest finished attempt for any lifetime
    detected_lifetime: str | None = None  # lifetime the detection belongs to
    failures: int = 0
    pending_attempts: int = 0  # answers of "not yet" for the current lifetime


class Tracker:
    """Owns the uid → VMI and uid → detection tables; thread-safe."""

    def __init__(
        self,
        detect: Callable[[VMI], Detection],
        node_name: str,
        *,
        metrics: Recorder,
        release: Callable[[str], None] | None = None,
        on_change: Callable[[], None] | None = None,
        workers: int = DEFAULT_WORKERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_change`` is called, outside the lock, after any change to what ``snapshot()``
        returns; it must not block."""
        self._detect = detect
        self._node = node_name
        self._metrics = metrics
        self._release = release
        self._on_change = on_change
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._uri_users: Counter[str] = Counter()  # libvirt URI → entries and running detections
        self._lock = threading.Lock()
        self._queue: DelayQueue[str] = DelayQueue(clock)
        self._workers = [Worker(f"detector-{index}", self._work_loop) for index in range(workers)]
        # Grows under the lock with every change ``snapshot()`` shows: tells ``_editing`` whether to
        # call ``on_change``, and is the version of the snapshot built from it.
        self._changes = 0
        self._snapshot = Snapshot(0, (), 0)

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._queue.shut_down()
        stop_all(self._workers, timeout)

    def upsert(self, vmi: VMI) -> None:
        """A VMI should be reported; detect it if its domain lifetime is new."""
        with self._editing() as released:
            entry = self._entries.get(vmi.key)
            if entry is None:
                self._entries[vmi.key] = _Entry(vmi, self._labels(vmi))
                self._uri_users[vmi.target.uri] += 1
                self._queue.add_after(vmi.key, 0.0)
                self._changes += 1
                return
            if entry.vmi == vmi:
                return
            lifetime_changed = entry.vmi.target.lifetime_key != vmi.target.lifetime_key
            labels_changed = (entry.vmi.namespace, entry.vmi.name) != (vmi.namespace, vmi.name)
            # The condition explains why a VMI is emulated: its change must reach /metrics too.
            exported_changed = labels_changed or entry.vmi.software_emulation != vmi.software_emulation
            if entry.vmi.target.uri != vmi.target.uri:
                self._uri_users[vmi.target.uri] += 1
                self._unuse(entry.vmi.target.uri, released)
            entry.vmi = vmi
            if lifetime_changed:
                entry.failures = entry.pending_attempts = 0
                self._queue.add_after(vmi.key, 0.0)
            if labels_changed:
                entry.labels = self._labels(vmi)
            if exported_changed:
                self._changes += 1

    def remove(self, key: str) -> None:
        with self._editing() as released:
            self._drop(key, released)

    def replace_all(self, vmis: Iterable[VMI]) -> None:
        """Reconcile with a full listing: what is absent goes, what is new or changed is upserted."""
        fresh = {vmi.key: vmi for vmi in vmis}
        for vmi in fresh.values():  # upserts first, so a launcher kept by the listing is never released
            self.upsert(vmi)
        with self._editing() as released:
            for key in [key for key in self._entries if key not in fresh]:
                self._drop(key, released)

    def retry_unknown(self, uri: str) -> None:
        """Re-detect now every VMI of ``uri`` left unknown: its daemon answers again."""
        with self._lock:
            keys = [
                key
                for key, entry in self._entries.items()
                if entry.vmi.target.uri == uri and entry.detection is not None and not entry.detection.ok
            ]
        for key in keys:
            self._queue.add_after(key, 0.0)
        if keys:
            log.info("re-detecting %d VMIs of %s after recovery", len(keys), uri)

    @property
    def changes(self) -> int:
        """Grows with every change to what ``snapshot()`` shows (a plain read: no lock, no rebuild)."""
        return self._changes

    def snapshot(self) -> Snapshot:
        """The current snapshot, rebuilt first if anything changed since the last one."""
        if self._snapshot.version == self._changes:
            return self._snapshot
        with self._lock:
            if self._snapshot.version == self._changes:  # another reader rebuilt it meanwhile
                return self._snapshot
            rows = []
            emulated = []
            pending = 0
            for entry in self._entries.values():
                if entry.detection is None:
                    pending += 1
                    continue
                namespace, name = entry.labels
                row = Series(entry.detection.hypervisor_type, name, namespace, self._node)
                rows.append(row)
                if row.hypervisor_type == EMULATED:
                    emulated.append((row, entry.vmi))
            rows.sort(key=lambda row: (row.namespace, row.name))
            unknown = sum(1 for row in rows if row.hypervisor_type == UNKNOWN)
            self._snapshot = Snapshot(self._changes, tuple(rows), pending, unknown, tuple(emulated))
            return self._snapshot

    def detections(self) -> list[tuple[VMI, Detection | None]]:
        """Every tracked VMI with its latest detection (for the detect command and debugging)."""
        with self._lock:
            return [(entry.vmi, entry.detection) for entry in self._entries.values()]

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no detection is due or running (used by `detect`)."""
        return self._queue.wait_idle(timeout)

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _editing(self) -> Iterator[list[str]]:
        """Hold the lock; then release the URIs collected in the yielded list and call
        ``on_change`` if anything ``snapshot()`` shows changed."""
        released: list[str] = []
        with self._lock:
            changes = self._changes
            yield released
            changed = self._changes != changes
        if self._release is not None:
            for uri in released:
                if uri:
                    self._release(uri)
        if changed and self._on_change is not None:
            self._on_change()

    def _labels(self, vmi: VMI) -> tuple[str, str]:
        labels = (encodable_label(vmi.namespace), encodable_label(vmi.name))
        if labels != (vmi.namespace, vmi.name):
            log.warning("%r/%r: label values replaced: they cannot be encoded", vmi.namespace, vmi.name)
            self._metrics.record_label_replaced()
        return labels

    def _drop(self, key: str, released: list[str]) -> None:
        """Forget ``key`` (must hold the lock); URIs nobody uses any more go to ``released``."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._queue.discard(key)
        self._unuse(entry.vmi.target.uri, released)
        self._changes += 1

    def _unuse(self, uri: str, released: list[str]) -> None:
        self._uri_users[uri] -= 1
        if self._uri_users[uri] <= 0:
            del self._uri_users[uri]
            released.append(uri)

    def _work_loop(self, _worker: Worker) -> None:
        while (key := self._queue.get()) is not None:
            try:
                self._run_detection(key)
            except Exception:
                log.exception("detection of %s failed unexpectedly", key)
            finally:
                self._queue.done(key)

    def _run_detection(self, key: str) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            vmi = entry.vmi
            self._uri_users[vmi.target.uri] += 1  # held until this attempt is recorded or discarded
        started = self._clock()
        try:
            detection = self._detect(vmi)
        except Exception as error:  # a detector must not raise, but one bug must not stop the pool
            log.exception("%s/%s: detection raised", vmi.namespace, vmi.name)
            detection = Detection(UNKNOWN, DetectionMethod.NONE, FailureReason.INTERNAL_ERROR, repr(error))
        if not detection.pending:
            self._metrics.record_detection(detection, self._clock() - started)
        # Gone or restarted meanwhile (the new lifetime has its own job): whatever this late attempt
        # set up for the old launcher (daemon state) is released if nothing else uses it.
        with self._editing() as released:
            entry = self._entries.get(key)
            discarded = entry is None or entry.vmi.target.lifetime_key != vmi.target.lifetime_key
            previous = None
            if entry is not None and not discarded:
                if detection.pending:  # not an answer: ask again soon, publish nothing new
                    entry.pending_attempts += 1
                    self._queue.add_after(key, PENDING_RETRY.delay(entry.pending_attempts))
                else:
                    entry.pending_attempts = 0
                    previous = self._record(key, entry, vmi, detection)
            self._unuse(vmi.target.uri, released)
        if discarded or detection.pending:
            return
        label = printable(f"{vmi.namespace}/{vmi.name}" if vmi.namespace else vmi.name)
        if detection.ok:
            log.debug("%s: hypervisor %s (via %s)", label, detection.hypervisor_type, detection.method.value)
        elif previous is None or previous.ok or previous.error != detection.error:
            log.warning("%s: hypervisor unknown (%s: %s)", label, detection.error, detection.detail)

    def _record(self, key: str, entry: _Entry, vmi: VMI, detection: Detection) -> Detection | None:
        """Store a finished detection (must hold the lock); returns the one it replaces."""
        previous = entry.detection
        if detection.ok:
            entry.failures = 0
        else:
            entry.failures += 1
            self._queue.add_after(key, RETRY.delay(entry.failures))
            if previous is not None and previous.ok and entry.detected_lifetime == vmi.target.lifetime_key:
                return previous  # a retry of a known lifetime failed: keep what was learned
        entry.detection = detection
        entry.detected_lifetime = vmi.target.lifetime_key
        if previous is None or previous.hypervisor_type != detection.hypervisor_type:
            self._changes += 1
        return previous
