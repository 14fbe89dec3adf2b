"""Joins the VMIs a source reports with their detections and publishes immutable snapshots.

Sources tell the tracker what should be reported (upsert/remove/replace_all); a small pool of
workers detects each new domain lifetime once; the result table is turned into a tuple of rows
that the metric callback reads without taking a lock. Everything slow (libvirt, retries) happens
here, off the scrape path.

The tracker is also the one place that knows when a libvirt URI stops mattering: no VMI uses it
and no detection for it is running. Only then is ``release`` called (KubeVirt mode: forget the
launcher's daemon state), so a late detection of a VMI that already left cannot leave state behind.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from otel_vmi_hv.backoff import Backoff
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
)
from otel_vmi_hv.revision import Revision

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
        revision: Revision,
        release: Callable[[str], None] | None = None,
        on_change: Callable[[], None] | None = None,
        workers: int = DEFAULT_WORKERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._detect = detect
        self._node = node_name
        self._metrics = metrics
        self._revision = revision
        self._release = release
        self._on_change = on_change  # told, outside the lock, after what snapshot() returns changed
        self._unannounced = False
        self._workers = workers
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._uri_users: Counter[str] = Counter()  # libvirt URI → entries and running detections
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queue: list[tuple[float, int, str]] = []  # (due, seq, key) heap
        self._queued: dict[str, float] = {}  # key → due time of its live heap item
        self._running: set[str] = set()
        self._deferred: set[str] = set()  # due while already running: run again when it ends
        self._seq = itertools.count()
        self._version = 0
        self._dirty = True
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._snapshot = Snapshot(0, (), 0)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for index in range(self._workers):
            thread = threading.Thread(target=self._work_loop, name=f"detector-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 1.0) -> None:
        with self._lock:
            self._stopping = True
            self._work.notify_all()
        deadline = self._clock() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - self._clock()))

    # ------------------------------------------------------------------ source events

    def upsert(self, vmi: VMI) -> None:
        """A VMI should be reported; detect it if its domain lifetime is new."""
        self._upsert(vmi)
        self._announce()

    def _upsert(self, vmi: VMI) -> None:
        released: list[str] = []
        with self._lock:
            entry = self._entries.get(vmi.key)
            if entry is None:
                self._entries[vmi.key] = _Entry(vmi, self._labels(vmi))
                self._use(vmi.target.uri)
                self._schedule(vmi.key, 0.0)
                self._changed()
                return
            if entry.vmi == vmi:
                return
            lifetime_changed = entry.vmi.target.lifetime_key != vmi.target.lifetime_key
            labels_changed = (entry.vmi.namespace, entry.vmi.name) != (vmi.namespace, vmi.name)
            # The condition explains why a VMI is emulated: its change must reach /metrics too.
            exported_changed = labels_changed or entry.vmi.software_emulation != vmi.software_emulation
            if entry.vmi.target.uri != vmi.target.uri:
                self._use(vmi.target.uri)
                self._unuse(entry.vmi.target.uri, released)
            entry.vmi = vmi
            if lifetime_changed:
                entry.failures = entry.pending_attempts = 0
                self._schedule(vmi.key, 0.0)
            if labels_changed:
                entry.labels = self._labels(vmi)
            if exported_changed:
                self._changed()
        self._release_all(released)

    def remove(self, key: str) -> None:
        released: list[str] = []
        with self._lock:
            self._drop(key, released)
        self._announce()
        self._release_all(released)

    def replace_all(self, vmis: Iterable[VMI]) -> None:
        """Reconcile with a full listing: what is absent goes, what is new or changed is upserted."""
        fresh = {vmi.key: vmi for vmi in vmis}
        for vmi in fresh.values():  # upserts first, so a launcher kept by the listing is never released
            self.upsert(vmi)
        released: list[str] = []
        with self._lock:
            for key in [key for key in self._entries if key not in fresh]:
                self._drop(key, released)
        self._announce()
        self._release_all(released)

    def retry_unknown(self, uri: str) -> None:
        """Re-detect now every VMI of ``uri`` left unknown: its daemon answers again."""
        count = 0
        with self._lock:
            for key, entry in self._entries.items():
                if entry.vmi.target.uri != uri or entry.detection is None or entry.detection.ok:
                    continue
                self._schedule(key, 0.0)
                count += 1
        if count:
            log.info("re-detecting %d VMIs of %s after recovery", count, uri)

    # ------------------------------------------------------------------ reading

    def snapshot(self) -> Snapshot:
        """Return the current snapshot, rebuilding it first if anything changed since the last one."""
        if not self._dirty:
            return self._snapshot
        with self._lock:
            return self._rebuild_locked()

    def _rebuild_locked(self) -> Snapshot:
        if not self._dirty:  # another reader rebuilt it while this one waited for the lock
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
        self._version += 1
        unknown = sum(1 for row in rows if row.hypervisor_type == UNKNOWN)
        self._snapshot = Snapshot(self._version, tuple(rows), pending, unknown, tuple(emulated))
        self._dirty = False
        return self._snapshot

    def detections(self) -> list[tuple[VMI, Detection | None]]:
        """Every tracked VMI with its latest detection (for the detect command and debugging)."""
        with self._lock:
            return [(entry.vmi, entry.detection) for entry in self._entries.values()]

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no detection is queued-and-due or running (used by `detect` and tests)."""
        deadline = self._clock() + timeout
        with self._lock:
            while True:
                now = self._clock()
                due = any(when <= now for when in self._queued.values())
                if not due and not self._running:
                    return True
                if now >= deadline:
                    return False
                self._work.wait(min(0.05, deadline - now))

    # ------------------------------------------------------------------ internals

    def _changed(self) -> None:
        self._dirty = self._unannounced = True
        self._revision.bump()

    def _announce(self) -> None:
        """Call ``on_change`` once for the changes made so far; never with the lock held."""
        if self._unannounced and self._on_change is not None:
            self._unannounced = False
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
        self._queued.pop(key, None)
        self._deferred.discard(key)
        self._unuse(entry.vmi.target.uri, released)
        self._changed()

    def _use(self, uri: str) -> None:
        self._uri_users[uri] += 1

    def _unuse(self, uri: str, released: list[str]) -> None:
        self._uri_users[uri] -= 1
        if self._uri_users[uri] <= 0:
            del self._uri_users[uri]
            released.append(uri)

    def _release_all(self, uris: list[str]) -> None:
        if self._release is None:
            return
        for uri in uris:
            if uri:
                self._release(uri)

    def _schedule(self, key: str, delay: float) -> None:
        """Queue a detection of ``key`` after ``delay``; must hold the lock."""
        due = self._clock() + delay
        current = self._queued.get(key)
        if current is not None and current <= due:
            return
        self._queued[key] = due
        heapq.heappush(self._queue, (due, next(self._seq), key))
        # notify_all: wait_idle() waits on the same condition and must not swallow a worker's wakeup.
        self._work.notify_all()

    def _next_job(self) -> str | None:
        with self._lock:
            while not self._stopping:
                now = self._clock()
                while self._queue:
                    due, _, key = self._queue[0]
                    if self._queued.get(key) != due:  # superseded or removed
                        heapq.heappop(self._queue)
                        continue
                    if due > now:
                        break
                    if key in self._running:  # one attempt per VMI at a time: run it after this one
                        heapq.heappop(self._queue)
                        del self._queued[key]
                        self._deferred.add(key)
                        continue
                    heapq.heappop(self._queue)
                    del self._queued[key]
                    self._running.add(key)
                    return key
                wait = self._queue[0][0] - now if self._queue else None
                self._work.wait(wait if wait is None else max(wait, 0.001))
            return None

    def _work_loop(self) -> None:
        while True:
            key = self._next_job()
            if key is None:
                return
            try:
                self._run_detection(key)
            except Exception:
                log.exception("detection of %s failed unexpectedly", key)
            finally:
                with self._lock:
                    self._running.discard(key)
                    if key in self._deferred:
                        self._deferred.discard(key)
                        if key in self._entries:
                            self._schedule(key, 0.0)
                    self._work.notify_all()

    def _run_detection(self, key: str) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            vmi = entry.vmi
            self._use(vmi.target.uri)  # held until this attempt is recorded or discarded
        started = self._clock()
        try:
            detection = self._detect(vmi)
        except Exception as error:  # a detector must not raise, but one bug must not stop the pool
            log.exception("%s/%s: detection raised", vmi.namespace, vmi.name)
            detection = Detection(UNKNOWN, DetectionMethod.NONE, FailureReason.INTERNAL_ERROR, repr(error))
        if not detection.pending:
            self._metrics.record_detection(detection, self._clock() - started)
        released: list[str] = []
        with self._lock:
            entry = self._entries.get(key)
            discarded = entry is None or entry.vmi.target.lifetime_key != vmi.target.lifetime_key
            previous = None
            if entry is not None and not discarded:
                if detection.pending:  # not an answer: ask again soon, publish nothing new
                    entry.pending_attempts += 1
                    self._schedule(key, PENDING_RETRY.delay(entry.pending_attempts))
                else:
                    entry.pending_attempts = 0
                    previous = self._record(key, entry, vmi, detection)
            self._unuse(vmi.target.uri, released)
        self._announce()
        # Gone or restarted meanwhile (the new lifetime has its own job): whatever this late attempt
        # set up for the old launcher (daemon state) is released here if nothing else uses it.
        self._release_all(released)
        if discarded or detection.pending:
            return
        label = _printable(f"{vmi.namespace}/{vmi.name}" if vmi.namespace else vmi.name)
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
            self._schedule(key, RETRY.delay(entry.failures))
            if previous is not None and previous.ok and entry.detected_lifetime == vmi.target.lifetime_key:
                return previous  # a retry of a known lifetime failed: keep what was learned
        entry.detection = detection
        entry.detected_lifetime = vmi.target.lifetime_key
        if previous is None or previous.hypervisor_type != detection.hypervisor_type:
            self._changed()
        return previous


def _printable(text: str) -> str:
    """A VMI's name for a log line: a hostile API server's control characters cannot forge lines."""
    return text if text.isprintable() else text.encode("unicode_escape", "backslashreplace").decode("ascii")
