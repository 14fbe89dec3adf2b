"""The OpenTelemetry side: one MeterProvider, the info gauge, self-metrics and the readers.

Every callback here reads state that other threads prepared (the tracker's snapshot, connection
states, counters) and does no I/O: the SDK runs callbacks under one lock and cannot interrupt them,
so I/O there would stall every scrape and export. Readers are picked from OTEL_METRICS_EXPORTER
because the SDK classes alone ignore it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, Exemplar, ExemplarReservoir, MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource

from otel_vmi_hv import __version__
from otel_vmi_hv.config import Settings
from otel_vmi_hv.export.otlp import ExportStatus, build_exporter, detach
from otel_vmi_hv.export.process_metrics import prometheus_text as process_text
from otel_vmi_hv.export.process_metrics import register_process_metrics
from otel_vmi_hv.export.prometheus_text import PrometheusTextReader
from otel_vmi_hv.export.sdk_state import AttributeStatePruner
from otel_vmi_hv.model import VMI, Detection
from otel_vmi_hv.revision import Revision
from otel_vmi_hv.tracker import Snapshot

log = logging.getLogger(__name__)

INFO_METRIC = "kubevirt_vmi_hypervisor_info"
INFO_HELP = "Information about the hypervisor type used by a VirtualMachineInstance"
# High enough never to fold real VMIs into an overflow series; the pruner keeps memory bounded.
INFO_CARDINALITY_LIMIT = 10_000_000
CONNECTION_STATES = ("idle", "connected", "disconnected", "hung")
# The process metrics' scope: collected for OTLP, rendered apart (fresh per scrape) for /metrics.
PROCESS_SCOPE = "otel_vmi_hv.process"
DETECTION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _NoExemplars(ExemplarReservoir):
    """An info gauge has no exemplars to keep; the default reservoir costs time on every series."""

    def offer(self, value: float, time_unix_nano: int, attributes: Any, context: Any) -> None:
        return None

    def collect(self, point_attributes: Any) -> list[Exemplar]:
        return []


def _no_exemplars(_aggregation_type: type) -> Callable[..., ExemplarReservoir]:
    return lambda *_args, **_kwargs: _NoExemplars()


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


class SelfMetrics(Recorder):
    """Instruments about the agent itself; none carries a per-VMI attribute."""

    def __init__(self, meter: Any, revision: Revision, export_status: ExportStatus | None) -> None:
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

    def _observe_last_sync(self, _options: CallbackOptions) -> Iterable[Observation]:
        when = self._last_sync
        return [] if when is None else [Observation(when)]

    def _observe_export_failures(self, _options: CallbackOptions) -> Iterable[Observation]:
        assert self._export_status is not None
        return [Observation(n, {"reason": r}) for r, n in sorted(self._export_status.failures.items())]


class Snapshots(Protocol):
    def publish(self) -> Snapshot: ...


class ConnectionStates(Protocol):
    def states(self) -> dict[str, str]: ...


class EmulationFacts(Protocol):
    def node_kvm_available(self) -> bool | None: ...
    def explain(self, vmi: VMI) -> tuple[str, str]: ...


def build_resource(settings: Settings) -> Resource:
    attributes: dict[str, str] = dict(settings.resource_attributes)
    attributes.update(
        {
            "service.name": settings.service_name,
            "service.version": __version__,
            "k8s.node.name": settings.node_name,
            "host.name": socket.gethostname(),
        }
    )
    return Resource.create(attributes)


class Telemetry:
    """Owns the MeterProvider; built once at start, shut down once at exit."""

    def __init__(
        self, settings: Settings, revision: Revision, *, extra_readers: Sequence[MetricReader] = ()
    ) -> None:
        self._revision = revision
        self._render_lock = threading.Lock()
        self._rendered: tuple[int, bytes] = (-1, b"")
        self.prometheus_collections = 0  # full collections made for /metrics (tests, benchmarks)

        readers: list[MetricReader] = list(extra_readers)
        self._prometheus: PrometheusTextReader | None = None
        if settings.exports_prometheus:
            self._prometheus = PrometheusTextReader(skip_scopes={PROCESS_SCOPE})
            readers.append(self._prometheus)
        self.export_status: ExportStatus | None = None
        if settings.exports_otlp:
            self.export_status = ExportStatus(settings.otlp_endpoint or "the default endpoint", revision)
            readers.append(
                PeriodicExportingMetricReader(
                    build_exporter(settings.otlp_protocol, self.export_status),
                    export_interval_millis=settings.export_interval_ms,
                    export_timeout_millis=settings.export_timeout_ms,
                )
            )
        if "console" in settings.metrics_exporters:
            readers.append(
                PeriodicExportingMetricReader(
                    ConsoleMetricExporter(),
                    export_interval_millis=settings.export_interval_ms,
                    export_timeout_millis=settings.export_timeout_ms,
                )
            )
        self.meter_provider = MeterProvider(
            metric_readers=readers,
            resource=build_resource(settings),
            shutdown_on_exit=False,
            exemplar_filter=AlwaysOffExemplarFilter(),
            views=[
                View(
                    instrument_name=INFO_METRIC,
                    aggregation_cardinality_limit=INFO_CARDINALITY_LIMIT,
                    exemplar_reservoir_factory=_no_exemplars,
                ),
            ],
        )
        self._meter = self.meter_provider.get_meter("otel_vmi_hv", __version__)
        register_process_metrics(self.meter_provider.get_meter(PROCESS_SCOPE, __version__))
        self.self_metrics = SelfMetrics(self._meter, revision, self.export_status)
        self.pruner: AttributeStatePruner | None = None

    def publish(self, snapshots: Snapshots, connections: ConnectionStates, facts: EmulationFacts) -> None:
        """Export the tracker's VMIs, why emulated ones are, and the connection states (once, at start)."""
        cache: tuple[int, list[Observation]] = (-1, [])
        pruner = AttributeStatePruner(self.meter_provider, INFO_METRIC)
        self.pruner = pruner

        def observe_info(_options: CallbackOptions) -> Iterable[Observation]:
            nonlocal cache
            snapshot = snapshots.publish()
            if cache[0] != snapshot.version:
                cache = (snapshot.version, [Observation(1, row.attributes()) for row in snapshot.series])
            pruner.prune_if_bloated(len(cache[1]))
            return cache[1]

        def observe_emulation(_options: CallbackOptions) -> Iterable[Observation]:
            # Only the emulated VMIs, and a pure function of cached facts: cheap per collection.
            observations = []
            for row, vmi in snapshots.publish().emulated:
                attributes = {"namespace": row.namespace, "name": row.name, "node": row.node}
                attributes["reason"] = facts.explain(vmi)[0]
                observations.append(Observation(1, attributes))
            return observations

        def observe_node_kvm(_options: CallbackOptions) -> Iterable[Observation]:
            available = facts.node_kvm_available()
            return [] if available is None else [Observation(int(available))]

        def observe_vmis(_options: CallbackOptions) -> Iterable[Observation]:
            snapshot = snapshots.publish()
            return [
                Observation(len(snapshot.series) - snapshot.unknown, {"state": "detected"}),
                Observation(snapshot.unknown, {"state": "unknown"}),
                Observation(snapshot.pending, {"state": "pending"}),
            ]

        def observe_connections(_options: CallbackOptions) -> Iterable[Observation]:
            counts = dict.fromkeys(CONNECTION_STATES, 0)
            for state in connections.states().values():
                counts[state] = counts.get(state, 0) + 1
            return [Observation(count, {"state": state}) for state, count in counts.items()]

        self._meter.create_observable_gauge(
            INFO_METRIC, callbacks=[observe_info], unit="", description=INFO_HELP
        )
        self._meter.create_observable_gauge(
            "otel_vmi_hv_vmi_emulation_info",
            callbacks=[observe_emulation],
            unit="",
            description="Why a VMI runs under QEMU TCG software emulation "
            "(reason: cross_arch, node_without_kvm, kvm_not_requested, unknown); 1 for emulated VMIs only",
        )
        self._meter.create_observable_gauge(
            "otel_vmi_hv_node_kvm_available",
            callbacks=[observe_node_kvm],
            unit="",
            description="1 when this node offers KVM to VMIs, 0 when it does not; absent while unknown",
        )
        self._meter.create_observable_gauge(
            "otel_vmi_hv_vmis",
            callbacks=[observe_vmis],
            unit="{vmi}",
            description="VMIs on this node being reported, by detection state (detected, unknown, pending)",
        )
        self._meter.create_observable_gauge(
            "otel_vmi_hv_libvirt_connections",
            callbacks=[observe_connections],
            unit="{daemon}",
            description="libvirt daemons known to the agent, by connection state "
            "(idle, connected, disconnected, hung)",
        )
        self._revision.bump()

    # ------------------------------------------------------------------ outputs

    def render_prometheus(self) -> bytes:
        """The /metrics body in Prometheus text format 0.0.4.

        Scrapes far outnumber changes, so the body of the last collection is served again while
        the revision has not moved; it is read before collecting, so a change racing with the
        collection only causes one more collection later, never a stale body. The process metrics
        change at every scrape: they are read and appended fresh, outside that cache.
        """
        return self._render_collected() + process_text()

    def _render_collected(self) -> bytes:
        if self._prometheus is None:
            raise LookupError("the prometheus exporter is not enabled (OTEL_METRICS_EXPORTER)")
        with self._render_lock:
            revision = self._revision.value
            if self._rendered[0] == revision:
                return self._rendered[1]
            body = self._prometheus.render()
            self.prometheus_collections += 1
            self._rendered = (revision, body)
            return body

    def shutdown(self, timeout: float) -> None:
        """Final OTLP export and reader shutdown, bounded by ``timeout`` seconds."""
        started = time.monotonic()
        done = threading.Event()

        def run() -> None:
            try:
                self.meter_provider.shutdown(timeout_millis=timeout * 1000)
            except Exception:
                log.warning("MeterProvider shutdown failed", exc_info=True)
            finally:
                done.set()

        threading.Thread(target=run, name="otel-shutdown", daemon=True).start()
        if not done.wait(timeout):
            log.warning("telemetry shutdown did not finish within %.1fs; exiting anyway", timeout)
        else:
            log.debug("telemetry shut down in %.3fs", time.monotonic() - started)
        if self.export_status is not None:
            detach(self.export_status)
