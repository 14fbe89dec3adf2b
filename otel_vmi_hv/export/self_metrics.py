"""The agent's instruments about itself (detections, watches, relists, Events, OTLP failures).

None carries a per-VMI attribute, so their cardinality is fixed whatever the node runs. ``version``
changes after every record, so /metrics knows when its cached body no longer holds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from otel_vmi_hv.export.otlp import ExportStatus
from otel_vmi_hv.interfaces import Recorder
from otel_vmi_hv.model import Detection

DETECTION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
PREFIX = "otel_vmi_hv_"
# Counter (name without PREFIX): its unit, a space, its description.
COUNTERS = {
    "detection_errors": "{detection} Detections that ended unknown, by reason",
    "watch_restarts": "{restart} VMI watch streams restarted, by reason (closed, error, expired, silent)",
    "relists": "{listing} Full VMI (or libvirt domain) listings reconciled into the cache",
    "label_values_replaced": "{value} VMI label values that could not be encoded (NUL, lone surrogates) "
    "and were replaced",
    "detection_mismatches": "{detection} Detections where /proc and libvirt named different hypervisor types",
    "events": "{event} Kubernetes Events about emulated VMIs, by result "
    "(created, updated, dropped, forbidden, failed)",
    "watch_handler_errors": "{error} Watch handlers that raised: a bug, logged with its traceback",
}


class SelfMetrics(Recorder):
    """Instruments about the agent itself; none carries a per-VMI attribute."""

    def __init__(self, meter: Any, export_status: ExportStatus | None) -> None:
        self._export_status = export_status
        self._last_sync: float | None = None
        self._records = 0
        self._lock = threading.Lock()
        self._counters = {
            key: meter.create_counter(PREFIX + key, unit=unit, description=description)
            for key, (unit, _, description) in ((k, v.partition(" ")) for k, v in COUNTERS.items())
        }
        self._duration = meter.create_histogram(
            PREFIX + "detection_duration",
            unit="s",
            description="Time to learn one domain's hypervisor type, by method",
            explicit_bucket_boundaries_advisory=list(DETECTION_BUCKETS),
        )
        meter.create_observable_gauge(
            PREFIX + "last_sync_timestamp",
            callbacks=[self._observe_last_sync],
            unit="s",
            description="Unix time the VMI list was last confirmed current "
            "(a full listing, a watch event or a bookmark)",
        )
        if export_status is not None:
            meter.create_observable_counter(
                PREFIX + "otlp_export_failures",
                callbacks=[self._observe_export_failures],
                unit="{export}",
                description="OTLP exports that failed, by reason (gRPC status, http_<code>, timeout, ...)",
            )

    @property
    def version(self) -> tuple[int, int]:
        """Changes after every record and every failed OTLP export."""
        return self._records, self._export_status.failed if self._export_status else 0

    def _recorded(self) -> None:
        with self._lock:
            self._records += 1

    def _add(self, key: str, attributes: dict[str, str] | None = None) -> None:
        self._counters[key].add(1, attributes)
        self._recorded()

    def record_detection(self, detection: Detection, seconds: float) -> None:
        self._duration.record(seconds, {"method": detection.method.value})
        if detection.error:
            self._counters["detection_errors"].add(1, {"reason": str(detection.error)})
        self._recorded()

    def record_watch_restart(self, reason: str) -> None:
        self._add("watch_restarts", {"reason": reason})

    def record_relist(self) -> None:
        self._add("relists")

    def record_sync(self, when: float) -> None:
        self._last_sync = when
        self._recorded()

    def record_label_replaced(self) -> None:
        self._add("label_values_replaced")

    def record_mismatch(self) -> None:
        self._add("detection_mismatches")

    def record_event(self, result: str) -> None:
        self._add("events", {"result": str(result)})

    def record_handler_error(self) -> None:
        self._add("watch_handler_errors")

    def _observe_last_sync(self, _options: CallbackOptions) -> Iterable[Observation]:
        when = self._last_sync
        return [] if when is None else [Observation(when)]

    def _observe_export_failures(self, _options: CallbackOptions) -> Iterable[Observation]:
        assert self._export_status is not None
        return [Observation(n, {"reason": r}) for r, n in sorted(self._export_status.counts().items())]
