"""What the emulation metrics report, computed ahead on a worker of its own, never by a metric read.

The facts (a cluster's Node and KubeVirt CR, or a host's KVM device) and the tracker's snapshot both
change on other threads; each change only wakes this worker, which derives the node's accelerator and
every emulated VMI's reason, publishes them as one immutable record and moves ``version``. Metric
callbacks and ``detect`` read that record and nothing else, so a collection starts no lookup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from otel_vmi_hv.emulation.reasons import EmulationPolicy, LauncherRequest, NodeAccelerator, explain_emulation
from otel_vmi_hv.interfaces import Snapshot
from otel_vmi_hv.model import VMI
from otel_vmi_hv.worker import Worker

log = logging.getLogger(__name__)

NOTHING_TRACKED = Snapshot(0, (), 0)
KVM_DEVICE = "kvm"
# Each pass reads the tracker's whole snapshot (a rebuild under its lock after a change): under churn,
# passes at most this often leave the lock to detection and the sources.
MIN_PASS_INTERVAL = 0.2


class EmulatedVmis(Protocol):
    """Told when an emulated VMI's explanation is first settled or its reason changes (Events)."""

    def emulated(self, vmi: VMI, reason: str, evidence: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Reading:
    """What the facts say at one moment: the KVM device, the hypervisor's device, the cluster policy."""

    kvm: NodeAccelerator
    accelerator: NodeAccelerator
    described: str  # the accelerator in words, for `detect`
    policy: EmulationPolicy | None  # None on a plain host: no cluster policy exists


def describe(accelerator: NodeAccelerator, why: str) -> str:
    state = {True: "present", False: "absent", None: "unknown"}[accelerator.available]
    return f"{accelerator.device or 'no known device'} {state} ({why})"


class ExplainedFacts:
    """The worker, the published record and ``version``; subclasses say how the facts are read."""

    def __init__(self, name: str, poll_interval: float | None = None) -> None:
        self._snapshots: Callable[[], Snapshot] = lambda: NOTHING_TRACKED
        self._events: EmulatedVmis | None = None
        self._recorded: dict[str, str] = {}  # VMI key → reason told to ``_events``
        self._wakeup = threading.Event()
        self._busy = False
        self._settled = threading.Condition()  # notified after each pass of the worker
        self._poll_interval = poll_interval
        self._publish_lock = threading.Lock()
        unread = NodeAccelerator(KVM_DEVICE, None, "not read yet")
        self._reading = Reading(unread, unread, "", None)  # published: replaced, never changed
        self._explanations: Mapping[str, tuple[str, str]] = MappingProxyType({})
        self._version = 0
        self._worker = Worker(name, self._run)

    # ------------------------------------------------------------------ subclasses

    def _read(self) -> Reading:
        raise NotImplementedError

    def _poll(self) -> None:
        """Every ``poll_interval``: re-read what is not watched (the host's device), or ask again what
        failed (a launcher pod lookup)."""

    def _launcher(self, vmi: VMI, device: str) -> LauncherRequest | None:
        """What the VMI's launcher pod requested, when known (only a cluster can tell)."""
        return None

    def _inputs_settled(self) -> bool:
        return True

    # ------------------------------------------------------------------ the interface

    @property
    def version(self) -> int:
        """Moves whenever anything this object reports changes."""
        return self._version

    def follow(self, snapshots: Callable[[], Snapshot]) -> None:
        """Explain the emulated VMIs of these snapshots (the tracker's); ``wake`` after each change."""
        self._snapshots = snapshots
        self.wake()

    def tell(self, events: EmulatedVmis) -> None:
        """Hand settled explanations, new or changed, to ``events``."""
        self._events = events

    def wake(self) -> None:
        """Something changed: recompute on the worker. Never blocks."""
        self._wakeup.set()

    def explanations(self) -> Mapping[str, tuple[str, str]]:
        """VMI key → (reason, evidence) for every emulated VMI explained so far; immutable."""
        return self._explanations

    def node_kvm_available(self) -> bool | None:
        return self._reading.kvm.available

    def node_accelerator_available(self) -> tuple[str, bool] | None:
        """``(device, available)`` for the configured hypervisor's device; None while unknown."""
        accelerator = self._reading.accelerator
        if accelerator.device is None or accelerator.available is None:
            return None
        return accelerator.device, accelerator.available

    def describe_accelerator(self) -> str:
        """This node's accelerator in words, for `detect`: which device, whether present, and why."""
        return self._reading.described

    def settled(self) -> bool:
        """The facts were read (or failed) and the last change is published (``detect`` waits for it)."""
        return not self._wakeup.is_set() and not self._busy and self._inputs_settled()

    def wait_settled(self, timeout: float) -> bool:
        """Wait until ``settled`` or ``timeout`` seconds passed; True when settled."""
        with self._settled:
            return self._settled.wait_for(self.settled, timeout)

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        self._wakeup.set()
        self._worker.join(0.5)

    # ------------------------------------------------------------------ the worker

    def _run(self, worker: Worker) -> None:
        interval = self._poll_interval
        next_poll = None if interval is None else time.monotonic() + interval
        while not worker.stopping:
            self._busy = True
            self._wakeup.clear()
            try:
                # Wakes do not postpone the poll: on a busy node they come more often than it is due.
                if interval is not None and next_poll is not None and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + interval
                    self._poll()
                self.publish()
            except Exception:  # a bug, or facts no one foresaw: logged, and the worker goes on
                log.exception("emulation facts: a pass failed")
            finally:
                self._busy = False
                with self._settled:
                    self._settled.notify_all()
            if worker.sleep(MIN_PASS_INTERVAL):
                return
            self._wakeup.wait(None if next_poll is None else max(0.0, next_poll - time.monotonic()))

    def publish(self) -> None:
        """Derive and publish what the facts and the latest snapshot say now (serialised)."""
        with self._publish_lock:
            reading = self._read()
            emulated = {vmi.key: vmi for _, vmi in self._snapshots().emulated}
            explained = {key: self._explain(vmi, reading) for key, vmi in emulated.items()}
            if reading != self._reading:
                log.info("emulation facts: %s", reading.described)
            if reading != self._reading or explained != self._explanations:
                self._reading, self._explanations = reading, MappingProxyType(explained)
                self._version += 1
            if self._events is not None and self._inputs_settled():
                self._tell_events(emulated, explained)

    def _explain(self, vmi: VMI, reading: Reading) -> tuple[str, str]:
        node = reading.accelerator
        launcher = None
        if vmi.software_emulation is None and node.available and node.device and reading.policy is not None:
            launcher = self._launcher(vmi, node.device)
        return explain_emulation(vmi.software_emulation, node, reading.policy, launcher)

    def _tell_events(self, vmis: Mapping[str, VMI], explained: Mapping[str, tuple[str, str]]) -> None:
        assert self._events is not None
        told, self._recorded = self._recorded, {key: reason for key, (reason, _) in explained.items()}
        for key, (reason, evidence) in explained.items():
            if told.get(key) != reason:
                self._events.emulated(vmis[key], reason, evidence)
