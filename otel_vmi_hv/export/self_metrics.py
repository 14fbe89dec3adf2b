"""The agent's instruments about itself (detections, watches, relists, OTLP failures).

None carries a per-VMI attribute, so their cardinality is fixed whatever the node runs. Every
record bumps the ``Revision``, since each one changes what /metrics shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from otel_vmi_hv.export.otlp import ExportStatus
from otel_vmi_hv.interfaces import Recorder
from otel_vmi_hv.model import Detection
from otel_vmi_hv.revision import Revision

DETECTION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class SelfMetrics(Recorder):
    """Instruments about the agent itself; none carries a per-VMI attribute."""

    def __init__(self, meter: Any, revision: Revision, export_status: ExportStatus | None) -> None:
        # Long: one statement per instrument, each with its name, unit and description.
        self._revision = revision
        self._export_status = export_status
        self._last_sync: float | None = None
        self.detection_duration = meter.create_histogram(
            "otel_vmi_hv_detection_duration",
            unit="s",
            description="Time to learn one domain's hypervisor type, by method",
            explicit_bucket_boundaries_advisory=list(DETECTION_BUCKETS),
        )
        self.detection_errors = meter.create_counter(
            "otel_vmi_hv_detection_errors",
            unit="{detection}",
            description="Detections that ended unknown, by reason",
        )
        self.watch_restarts = meter.create_counter(
            "otel_vmi_hv_watch_restarts",
            unit="{restart}",
            description="VMI watch streams restarted, by reason (closed, error, expired, silent)",
        )
        self.relists = meter.create_counter(
            "otel_vmi_hv_relists",
            unit="{listing}",
            description="Full VMI (or libvirt domain) listings reconciled into the cache",
        )
        self.labels_replaced = meter.create_counter(
            "otel_vmi_hv_label_values_replaced",
            unit="{value}",
            description="VMI label values that could not be encoded (NUL, lone surrogates) and were replaced",
        )
        self.mismatches = meter.create_counter(
            "otel_vmi_hv_detection_mismatches",
            unit="{detection}",
            description="Detections where /proc and libvirt named different hypervisor types",
        )
        self.events = meter.create_counter(
            "otel_vmi_hv_events",
            unit="{event}",
            description="Kubernetes Events about emulated VMIs, by result "
            "(created, updated, dropped, forbidden, failed)",
        )
        meter.create_observable_gauge(
            "otel_vmi_hv_last_sync_timestamp",
            callbacks=[self._observe_last_sync],
            unit="s",
            description="Unix time the VMI list was last confirmed current "
            "(a full listing, a watch event or a bookmark)",
        )
        if export_status is not None:
            meter.create_observable_counter(
                "otel_vmi_hv_otlp_export_failures",
                callbacks=[self._observe_export_failures],
                unit="{export}",
                description="OTLP exports that failed, by reason (gRPC status, http_<code>, timeout, ...)",
            )

    def record_detection(self, detection: Detection, seconds: float) -> None:
        self.detection_duration.record(seconds, {"method": detection.method.value})
        if detection.error:
            self.detection_errors.add(1, {"reason": detection.error})
        self._revision.bump()

    def record_watch_restart(self, reason: str) -> None:
        self.watch_restarts.add(1, {"reason": reason})
        self._revision.bump()

    def record_relist(self) -> None:
        self.relists.add(1)
        self._revision.bump()

    def record_sync(self, when: float) -> None:
        self._last_sync = when
        self._revision.bump()

    def record_label_replaced(self) -> None:
        self.labels_replaced.add(1)
        self._revision.bump()

    def record_mismatch(self) -> None:
        self.mismatches.add(1)
        self._revision.bump()

    def record_event(self, result: str) -> None:
        self.events.add(1, {"result": result})
        self._revision.bump()

    def _observe_last_sync(self, _options: CallbackOptions) -> Iterable[Observation]:
        when = self._last_sync
        return [] if when is None else [Observation(when)]

    def _observe_export_failures(self, _options: CallbackOptions) -> Iterable[Observation]:
        assert self._export_status is not None
        return [Observation(n, {"reason": r}) for r, n in sorted(self._export_status.failures.items())]
