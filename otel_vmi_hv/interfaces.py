"""The seams between the agent's parts, kept below all of them so no part imports another's class.

Sources feed a ``Sink`` (the tracker), detection methods are ``Detector``s asked in order, the
tracker publishes ``Snapshot``s that telemetry reads through ``Snapshots``, every part records what
it does on a ``Recorder``, and ``EmulationFacts`` explains emulated VMIs from whatever the agent
watches (the cluster or the host). Each is defined once, here; the concrete classes live in their
own packages and only this module is imported across package lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from otel_vmi_hv.model import VMI, Detection, Series


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the metric callbacks export; replaced as a whole, never mutated. ``version`` changes
    whenever the content does, so a reader can tell a new snapshot from the one it saw."""

    version: int
    series: tuple[Series, ...]
    pending: int  # VMIs whose first detection has not finished
    unknown: int = 0  # series whose hypervisor_type is unknown
    emulated: tuple[tuple[Series, VMI], ...] = ()  # the qemu-tcg rows with their VMI, to explain them


class Snapshots(Protocol):
    """Where the metric callbacks read the latest snapshot; the read must not block on I/O."""

    def snapshot(self) -> Snapshot: ...

    @property
    def changes(self) -> int:
        """Grows with every change to what ``snapshot()`` shows; read without a lock or a rebuild."""
        ...


class Sink(Protocol):
    """What a source tells about the VMIs that should be reported."""

    def upsert(self, vmi: VMI) -> None: ...
    def remove(self, key: str) -> None: ...
    def replace_all(self, vmis: Iterable[VMI]) -> None: ...


class Detector(Protocol):
    """One detection method: a VMI's hypervisor type, never raising (failures are ``unknown``)."""

    def detect(self, vmi: VMI) -> Detection: ...


class ConnectionStates(Protocol):
    """The libvirt daemons the agent knows, by URI, with their connection state; a new dict per
    call, compared by value to tell whether anything changed."""

    def states(self) -> Mapping[str, str]: ...


class EmulationFacts(Protocol):
    """Why emulated VMIs are, computed ahead from cached facts (cluster or host); reads are immutable.

    ``follow`` names the snapshots to explain and ``wake`` says they (or anything) changed: a worker
    of the facts then recomputes and publishes, moving ``version`` whenever anything reported changes.
    """

    @property
    def version(self) -> int: ...
    def node_kvm_available(self) -> bool | None: ...
    def node_accelerator_available(self) -> tuple[str, bool] | None: ...
    def explanations(self) -> Mapping[str, tuple[str, str]]:
        """VMI key → (reason, evidence) for each emulated VMI explained so far."""
        ...

    def follow(self, snapshots: Callable[[], Snapshot]) -> None: ...
    def wake(self) -> None: ...
    def describe_accelerator(self) -> str: ...
    def settled(self) -> bool: ...
    def wait_settled(self, timeout: float) -> bool: ...
    def problems(self) -> list[str]: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class Recorder:
    """What the agent's parts record about themselves; this base records nothing.

    ``otel-vmi-hv detect`` runs without OpenTelemetry and uses it as it is, so no part has to ask
    whether telemetry exists.
    """

    def record_detection(self, detection: Detection, seconds: float) -> None:
        """One finished attempt to learn a domain's type."""

    def record_watch_restart(self, reason: str) -> None:
        """A VMI watch stream ended and is being resumed (closed, error, expired, silent)."""

    def record_relist(self) -> None:
        """A full listing was reconciled into the cache."""

    def record_sync(self, when: float) -> None:
        """The VMI list was confirmed current at Unix time ``when``."""

    def record_label_replaced(self) -> None:
        """A VMI label value could not be encoded and was replaced."""

    def record_mismatch(self) -> None:
        """/proc and libvirt answered differently for one VMI."""

    def record_event(self, result: str) -> None:
        """One Kubernetes Event about an emulated VMI: created, updated, dropped, forbidden, failed."""

    def record_handler_error(self) -> None:
        """What a list-watch called (its handler, this recorder) raised: a bug, logged with its traceback."""
