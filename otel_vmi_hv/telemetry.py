"""The OpenTelemetry side: one MeterProvider, the info gauge, self-metrics and the readers.

The info gauge's callback reads the tracker's snapshot and nothing else: the SDK runs callbacks
under one global lock and cannot interrupt them, so any I/O there would stall every scrape and
export. Readers are picked from OTEL_METRICS_EXPORTER because the SDK classes alone ignore it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, Exemplar, ExemplarReservoir, MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource

from otel_vmi_hv import __version__
from otel_vmi_hv.config import Settings
from otel_vmi_hv.model import Detection, Series
from otel_vmi_hv.otlp import CachingEncoder, grpc_exporter, http_exporter
from otel_vmi_hv.prometheus_text import PrometheusTextReader
from otel_vmi_hv.sdk_state import AttributeStatePruner
from otel_vmi_hv.tracker import Snapshot

log = logging.getLogger(__name__)

INFO_METRIC = "kubevirt_vmi_hypervisor_info"
INFO_HELP = "Information about the hypervisor type used by a VirtualMachineInstance"
# High enough never to fold real VMIs into an overflow series; the pruner keeps memory bounded.
INFO_CARDINALITY_LIMIT = 10_000_000
_CALLBACK_CONTEXT = Context({"otel_vmi_hv.callback": True})
_OTLP_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.sdk.metrics._internal.export",
)


class _NoExemplars(ExemplarReservoir):
    """An info gauge has no exemplars to keep; the default reservoir costs time on every series."""

    def offer(self, value: float, time_unix_nano: int, attributes: Any, context: Any) -> None:
        return None

    def collect(self, point_attributes: Any) -> list[Exemplar]:
        return []


def _no_exemplars(_aggregation_type: type) -> Callable[..., ExemplarReservoir]:
    return lambda *_args, **_kwargs: _NoExemplars()


class SelfMetrics:
    """Instruments about the agent itself; none carries a per-VMI attribute."""

    def __init__(self, meter: Any) -> None:
        self.detection_duration = meter.create_histogram(
            "otel_vmi_hv_detection_duration",
            unit="s",
            description="Time to learn one domain's hypervisor type, by method (libvirt, domain_file, none)",
            explicit_bucket_boundaries_advisory=[
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
            ],
        )
        self.detection_errors = meter.create_counter(
            "otel_vmi_hv_detection_errors",
            unit="{detection}",
            description="Detections that ended unknown, by reason",
        )
        self.watch_restarts = meter.create_counter(
            "otel_vmi_hv_watch_restarts",
            unit="{restart}",
            description="VMI watch streams restarted, by reason (closed, error, expired)",
        )
        self.relists = meter.create_counter(
            "otel_vmi_hv_relists",
            unit="{listing}",
            description="Full VMI (or libvirt domain) listings reconciled into the cache",
        )
        self.changes = 0  # bumped on every recording, so cached renders know they are stale

    def record_detection(self, detection: Detection, seconds: float) -> None:
        self.detection_duration.record(seconds, {"method": detection.method.value})
        if detection.error:
            self.detection_errors.add(1, {"reason": detection.error})
        self.changes += 1

    def record_watch_restart(self, reason: str) -> None:
        self.watch_restarts.add(1, {"reason": reason})
        self.changes += 1

    def record_relist(self) -> None:
        self.relists.add(1)
        self.changes += 1


class _LoggingExporter(MetricExporter):
    """Wraps an OTLP exporter so an absent Collector costs one warning per state change.

    The SDK exporters log every failed export (each interval, with retries); operators of a node
    agent want to know when exports start failing and when they recover, not a log line a minute.
    """

    def __init__(self, inner: MetricExporter, target: str) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._target = target
        self._failing = False
        self.exports_ok = 0
        self.exports_failed = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as error:  # an exporter bug must not kill the export thread
            log.debug("OTLP export raised", exc_info=True)
            result = MetricExportResult.FAILURE
            detail = repr(error)
        else:
            detail = ""
        if result is MetricExportResult.SUCCESS:
            self.exports_ok += 1
            if self._failing:
                log.info("OTLP export to %s works again", self._target)
                self._failing = False
        else:
            self.exports_failed += 1
            if not self._failing:
                log.warning(
                    "OTLP export to %s is failing%s; will keep retrying every interval",
                    self._target,
                    f": {detail}" if detail else "",
                )
                self._failing = True
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def _otlp_exporter(settings: Settings) -> tuple[MetricExporter, str]:
    encoder = CachingEncoder(INFO_METRIC)
    exporter = http_exporter(encoder) if settings.otlp_protocol == "http/protobuf" else grpc_exporter(encoder)
    return exporter, getattr(exporter, "_endpoint", settings.otlp_endpoint or "the default endpoint")


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
        self,
        settings: Settings,
        snapshot: Callable[[], Snapshot],
        *,
        connection_states: Callable[[], dict[str, str]] = dict,
        connection_state_version: Callable[[], int] = lambda: 0,
        last_sync: Callable[[], float | None] = lambda: None,
        extra_readers: Sequence[MetricReader] = (),
    ) -> None:
        self._snapshot = snapshot
        self._connection_states = connection_states
        self._connection_state_version = connection_state_version
        self._last_sync = last_sync
        self._render_lock = threading.Lock()
        self._rendered: tuple[tuple[object, ...] | None, bytes] = (None, b"")
        self.prometheus_collections = 0  # full collections made for /metrics (tests, benchmarks)
        self.otlp_exporter: _LoggingExporter | None = None

        readers: list[MetricReader] = list(extra_readers)
        self._prometheus: PrometheusTextReader | None = None
        if settings.exports_prometheus:
            self._prometheus = PrometheusTextReader()
            readers.append(self._prometheus)
        if settings.exports_otlp:
            for name in _OTLP_LOGGERS:
                # Failures are reported once per state change by _LoggingExporter instead.
                logging.getLogger(name).setLevel(logging.CRITICAL)
            inner, target = _otlp_exporter(settings)
            self.otlp_exporter = _LoggingExporter(inner, target)
            readers.append(
                PeriodicExportingMetricReader(
                    self.otlp_exporter,
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
        meter = self.meter_provider.get_meter("otel_vmi_hv", __version__)
        self._observations: tuple[int, list[Observation]] = (-1, [])
        self._row_observations: dict[Series, Observation] = {}
        self.info_gauge = meter.create_observable_gauge(
            INFO_METRIC, callbacks=[self._observe_info], unit="", description=INFO_HELP
        )
        self.pruner = AttributeStatePruner(self.meter_provider, self.info_gauge)
        self.self_metrics = SelfMetrics(meter)
        meter.create_observable_gauge(
            "otel_vmi_hv_vmis",
            callbacks=[self._observe_vmis],
            unit="{vmi}",
            description="VMIs on this node being reported, by detection state (detected, unknown, pending)",
        )
        meter.create_observable_gauge(
            "otel_vmi_hv_libvirt_connections",
            callbacks=[self._observe_connections],
            unit="{daemon}",
            description="libvirt daemons known to the agent, by connection state "
            "(idle, connected, disconnected, hung)",
        )
        meter.create_observable_gauge(
            "otel_vmi_hv_last_sync_timestamp",
            callbacks=[self._observe_last_sync],
            unit="s",
            description="Unix time the VMI list was last confirmed current "
            "(a full listing, a watch event or a bookmark)",
        )

    # ------------------------------------------------------------------ callbacks (snapshot reads only)

    def _observe_info(self, _options: CallbackOptions) -> Iterable[Observation]:
        snapshot = self._snapshot()
        version, observations = self._observations
        if version != snapshot.version:
            # Rows are immutable values: a row that did not change keeps its Observation.
            previous, current = self._row_observations, {}
            for row in snapshot.series:
                observation = previous.get(row)
                if observation is None:
                    observation = Observation(
                        1,
                        {
                            "namespace": row.namespace,
                            "name": row.name,
                            "node": row.node,
                            "hypervisor_type": row.hypervisor_type,
                        },
                        # A non-empty context spares the SDK a context lookup per observation.
                        _CALLBACK_CONTEXT,
                    )
                current[row] = observation
            observations = list(current.values())
            self._row_observations = current
            self._observations = (snapshot.version, observations)
        self.pruner.prune_if_bloated(len(observations))
        return observations

    def _observe_vmis(self, _options: CallbackOptions) -> Iterable[Observation]:
        snapshot = self._snapshot()
        return [
            Observation(len(snapshot.series) - snapshot.unknown, {"state": "detected"}),
            Observation(snapshot.unknown, {"state": "unknown"}),
            Observation(snapshot.pending, {"state": "pending"}),
        ]

    def _observe_connections(self, _options: CallbackOptions) -> Iterable[Observation]:
        counts = dict.fromkeys(("idle", "connected", "disconnected", "hung"), 0)
        for state in self._connection_states().values():
            counts[state] = counts.get(state, 0) + 1
        return [Observation(count, {"state": state}) for state, count in counts.items()]

    def _observe_last_sync(self, _options: CallbackOptions) -> Iterable[Observation]:
        when = self._last_sync()
        return [] if when is None else [Observation(when)]

    # ------------------------------------------------------------------ outputs

    def _state_key(self) -> tuple[object, ...]:
        """Everything a collection reads, reduced to counters: equal keys mean an identical body."""
        return (
            self._snapshot().version,
            self.self_metrics.changes,
            self._connection_state_version(),
            self._last_sync(),
        )

    def render_prometheus(self) -> bytes:
        """The /metrics body in Prometheus text format 0.0.4.

        Scrapes far outnumber changes, so the body of the last collection is served again while
        nothing it depends on has changed; the key is taken before collecting, so a change racing
        with the collection only causes one more collection, never a stale body.
        """
        if self._prometheus is None:
            raise LookupError("the prometheus exporter is not enabled (OTEL_METRICS_EXPORTER)")
        with self._render_lock:
            key = self._state_key()
            cached_key, cached_body = self._rendered
            if key == cached_key:
                return cached_body
            body = self._prometheus.render()
            self.prometheus_collections += 1
            self._rendered = (key, body)
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
