"""What Telemetry.publish() reads (the tracker's snapshots, connection states, emulation facts),
held fixed by a test or benchmark that sets the snapshot itself."""

from __future__ import annotations

from otel_vmi_hv.revision import Revision
from otel_vmi_hv.tracker import Snapshot


class FixedInputs:
    def __init__(self, revision: Revision, snapshot: Snapshot | None = None) -> None:
        self.revision = revision
        self.snapshot = snapshot or Snapshot(0, (), 0)

    def set(self, snapshot: Snapshot) -> None:
        """A new snapshot, announced as the tracker does: after it is in place."""
        self.snapshot = snapshot
        self.revision.bump()

    def publish(self) -> Snapshot:
        return self.snapshot

    def states(self) -> dict[str, str]:
        return {}

    def node_kvm_available(self) -> bool | None:
        return None

    def explain(self, vmi: object) -> tuple[str, str]:
        return ("unknown", "")
