"""OTLP exporters whose encoding reuses the protobuf attributes of the info gauge's series.

``encode_metrics`` rebuilds every data point's attribute KeyValues on every export: half of an
export cycle at 10,000 VMIs. A VMI's four attributes do not change during its lifetime, so their
encoded form is kept (bounded to the series present in the last export) and copied into each new
point. Everything else is encoded by the SDK's own encoder, and the result is the same message
``encode_metrics`` builds (a test compares them). Transport, retries, TLS, headers, compression and
timeouts stay the SDK exporters' own: only the encoding step is swapped.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.sdk.metrics.export import Gauge, MetricsData

log = logging.getLogger(__name__)


class CachingEncoder:
    def __init__(self, metric_name: str) -> None:
        self._name = metric_name
        self._templates: dict[tuple[Any, ...], metrics_pb2.NumberDataPoint] = {}

    def encode(self, data: MetricsData) -> ExportMetricsServiceRequest:
        found = _find_gauge(data, self._name)
        if found is None:
            return encode_metrics(data)
        stripped, points = found
        if any(point.exemplars for point in points):
            return encode_metrics(data)
        request = encode_metrics(stripped)
        target = _find_pb_metric(request, self._name)
        if target is None:  # cannot happen with the stripped copy; stay correct regardless
            return encode_metrics(data)
        previous, current = self._templates, {}
        pb_points = target.gauge.data_points
        for point in points:
            key = tuple(point.attributes.items())
            template = previous.get(key)
            if template is None:
                template = metrics_pb2.NumberDataPoint(attributes=_encode_attributes(point.attributes))
            current[key] = template
            pb_point = pb_points.add()
            pb_point.MergeFrom(template)
            pb_point.time_unix_nano = point.time_unix_nano
            if isinstance(point.value, int):
                pb_point.as_int = point.value
            else:
                pb_point.as_double = point.value
        self._templates = current
        return request


def _find_gauge(data: MetricsData, name: str) -> tuple[MetricsData, list[Any]] | None:
    """A copy of ``data`` whose gauge ``name`` has no points, and those points."""
    for r_index, resource_metrics in enumerate(data.resource_metrics):
        for s_index, scope_metrics in enumerate(resource_metrics.scope_metrics):
            for m_index, metric in enumerate(scope_metrics.metrics):
                if metric.name != name or not isinstance(metric.data, Gauge):
                    continue
                empty = dataclasses.replace(metric, data=dataclasses.replace(metric.data, data_points=[]))
                metrics = [*scope_metrics.metrics[:m_index], empty, *scope_metrics.metrics[m_index + 1 :]]
                scopes = list(resource_metrics.scope_metrics)
                scopes[s_index] = dataclasses.replace(scope_metrics, metrics=metrics)
                resources = list(data.resource_metrics)
                resources[r_index] = dataclasses.replace(resource_metrics, scope_metrics=scopes)
                return dataclasses.replace(data, resource_metrics=resources), list(metric.data.data_points)
    return None


def _find_pb_metric(request: ExportMetricsServiceRequest, name: str) -> metrics_pb2.Metric | None:
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == name:
                    found: metrics_pb2.Metric = metric
                    return found
    return None


def grpc_exporter(encoder: CachingEncoder) -> Any:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    class GrpcExporter(OTLPMetricExporter):
        def _translate_data(self, data: MetricsData) -> ExportMetricsServiceRequest:
            return encoder.encode(data)

    return GrpcExporter()


def http_exporter(encoder: CachingEncoder) -> Any:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter, _split_metrics_data
    from opentelemetry.sdk.metrics.export import MetricExportResult

    class HttpExporter(OTLPMetricExporter):
        # The SDK's export() with encode_metrics replaced by the caching encoder.
        def export(
            self, metrics_data: MetricsData, timeout_millis: float | None = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            if self._shutdown:
                return MetricExportResult.FAILURE
            try:
                request = encoder.encode(metrics_data)
            except Exception:  # the SDK logs and fails the batch the same way
                log.exception("failed to encode metrics for OTLP")
                return MetricExportResult.FAILURE
            if self._max_export_batch_size is None:
                result: MetricExportResult = self._export_batch(request)
                return result
            for batch in _split_metrics_data(request, self._max_export_batch_size):
                if self._export_batch(batch) != MetricExportResult.SUCCESS:
                    return MetricExportResult.FAILURE
            return MetricExportResult.SUCCESS

    return HttpExporter()
