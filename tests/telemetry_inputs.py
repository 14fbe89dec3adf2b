"""What Telemetry.register_vmi_instruments() reads (the tracker's snapshots, connection states,
emulation facts), held fixed by a test or benchmark that sets the snapshot itself."""

from __future__ import annotations

from collections.abc import Mapping

from otel_vmi_hv.interfaces import Snapshot


class FixedInputs:
    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self.current = snapshot or Snapshot(0, (), 0)
        self.version = 0  # of the emulation facts, which never change here

    def set(self, snapshot: Snapshot) -> None:
        """A new snapshot (with a new version, as the tracker's)."""
        self.current = snapshot

    def snapshot(self) -> Snapshot:
        return self.current

    @property
    def changes(self) -> int:
        return self.current.version

    def states(self) -> dict[str, str]:
        return {}

    def node_kvm_available(self) -> bool | None:
        return None

    def node_accelerator_available(self) -> tuple[str, bool] | None:
        return None

    def explanations(self) -> Mapping[str, tuple[str, str]]:
        return {}

    def follow(self, snapshots: object) -> None:
        """The snapshot is set by the test itself."""

    def wake(self) -> None:
        """Nothing to recompute."""

    def describe_accelerator(self) -> str:
        return ""

    def settled(self) -> bool:
        return True

    def wait_settled(self, timeout: float) -> bool:
        return True

    def problems(self) -> list[str]:
        return []

    def start(self) -> None:
        """Nothing to watch: the facts are fixed."""

    def stop(self) -> None:
        """Nothing to stop."""
