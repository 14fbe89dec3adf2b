"""The OpenTelemetry side: one MeterProvider, its readers, and the cached /metrics body.

Readers are picked from OTEL_METRICS_EXPORTER because the SDK classes alone ignore it. The
instruments live in ``vmi_instruments`` (per VMI), ``self_metrics`` and ``process_metrics``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, Exemplar, ExemplarReservoir, MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import View

from otel_vmi_hv import __version__
from otel_vmi_hv.config import Settings
from otel_vmi_hv.export.exposition import Exposition, Format, Scrape
from otel_vmi_hv.export.otlp import ExportStatus, build_exporter, detach
from otel_vmi_hv.export.process_metrics import prometheus_text as process_text
from otel_vmi_hv.export.process_metrics import register_process_metrics
from otel_vmi_hv.export.prometheus_text import PrometheusTextReader
from otel_vmi_hv.export.resource import build_resource
from otel_vmi_hv.export.sdk_state import AttributeStatePruner
from otel_vmi_hv.export.self_metrics import SelfMetrics
from otel_vmi_hv.export.vmi_instruments import INFO_METRIC, VmiInstruments
from otel_vmi_hv.interfaces import ConnectionStates, EmulationFacts, Snapshots
from otel_vmi_hv.worker import run_once

log = logging.getLogger(__name__)

# High enough never to fold real VMIs into an overflow series; the pruner keeps memory bounded.
INFO_CARDINALITY_LIMIT = 10_000_000
# The process metrics' scope: collected for OTLP, rendered apart (fresh per scrape) for /metrics.
PROCESS_SCOPE = "otel_vmi_hv.process"


class _NoExemplars(ExemplarReservoir):
    """An info gauge has no exemplars to keep; the default reservoir costs time on every series."""

    def offer(self, value: float, time_unix_nano: int, attributes: Any, context: Any) -> None:
        return None

    def collect(self, point_attributes: Any) -> list[Exemplar]:
        return []


def _no_exemplars(_aggregation_type: type) -> Callable[..., ExemplarReservoir]:
    return lambda *_args, **_kwargs: _NoExemplars()


class Telemetry:
    """Owns the MeterProvider; built once at start, shut down once at exit."""

    def __init__(self, settings: Settings, *, extra_readers: Sequence[MetricReader] = ()) -> None:
        self._vmi_state: Callable[[], object] = tuple
        self._sdk_metrics = settings.sdk_internal_metrics
        fresh = lambda fmt: process_text(openmetrics=fmt is Format.OPENMETRICS)  # noqa: E731
        self.exposition = Exposition(self._state, self._collect_for_scrape, fresh)

        readers: list[MetricReader] = list(extra_readers)
        self._prometheus: PrometheusTextReader | None = None
        if settings.exports_prometheus:
            self._prometheus = PrometheusTextReader(skip_scopes={PROCESS_SCOPE})
            readers.append(self._prometheus)
        self.export_status: ExportStatus | None = None
        exporters: list[MetricExporter] = []
        if settings.exports_otlp:
            self.export_status = ExportStatus(settings.otlp_endpoint or "the default endpoint")
            exporters.append(build_exporter(settings.otlp_protocol, self.export_status))
        if "console" in settings.metrics_exporters:
            exporters.append(ConsoleMetricExporter())
        readers += [
            PeriodicExportingMetricReader(
                exporter,
                export_interval_millis=settings.export_interval_ms,
                export_timeout_millis=settings.export_timeout_ms,
            )
            for exporter in exporters
        ]
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
        self.self_metrics = SelfMetrics(self._meter, self.export_status)

    def register_vmi_instruments(
        self, snapshots: Snapshots, connections: ConnectionStates, facts: EmulationFacts
    ) -> None:
        """Start exporting the tracker's VMIs, why emulated ones are, and the connection states.

        Called once, at start, when the tracker and the facts exist; the instruments only read them.
        """
        pruner = AttributeStatePruner(self.meter_provider, INFO_METRIC)
        VmiInstruments(snapshots, connections, facts, pruner).register(self._meter)
        self._vmi_state = lambda: (snapshots.changes, connections.states(), facts.version)

    def _state(self) -> object:
        """The version of everything the collected part of /metrics shows, read at each scrape:
        /metrics serves its last body again while this compares equal (see ``exposition.py``)."""
        if self._sdk_metrics:  # the SDK's own metrics move at every collection: no body holds
            return object()
        return self.self_metrics.version, self._vmi_state()

    # ------------------------------------------------------------------ outputs

    def scrape(self, accept: str = "", accept_encoding: str = "") -> Scrape:
        """The /metrics answer for these request headers: OpenMetrics or text 0.0.4, gzipped or not;
        a collection only when ``_state`` changed."""
        if self._prometheus is None:
            raise LookupError("the prometheus exporter is not enabled (OTEL_METRICS_EXPORTER)")
        return self.exposition.scrape(accept, accept_encoding)

    def scrape_cached(self, accept: str, accept_encoding: str) -> Scrape | None:
        """``scrape`` when it needs no collection and never waits (see ``Exposition.cached``), else
        None: the HTTP server answers that on its event loop, without a thread hop."""
        return None if self._prometheus is None else self.exposition.cached(accept, accept_encoding)

    def _collect_for_scrape(self, fmt: Format) -> bytes:
        assert self._prometheus is not None
        return self._prometheus.render(openmetrics=fmt is Format.OPENMETRICS)

    def shutdown(self, timeout: float) -> None:
        """Final OTLP export and reader shutdown, bounded by ``timeout`` seconds."""
        started = time.monotonic()
        if not run_once("otel-shutdown", lambda: self.meter_provider.shutdown(timeout * 1000)).join(timeout):
            log.warning("telemetry shutdown did not finish within %.1fs; exiting anyway", timeout)
        else:
            log.debug("telemetry shut down in %.3fs", time.monotonic() - started)
        if self.export_status is not None:
            detach(self.export_status)
