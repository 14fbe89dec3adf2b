"""OTLP push through the SDK's own ``OTLPMetricExporter`` (gRPC or HTTP), told honestly.

Transport, retries, TLS and timeouts are the stock exporter's (the standard OTEL_EXPORTER_OTLP_*
variables). The SDK logs every failed attempt of every interval, so an absent Collector would fill
the log: here the first failure (and a change of reason) is logged once with its reason, recovery
once, and every failure is counted by reason. The reason comes from the arguments of the SDK's own
log records of that export, which are then not repeated; other records pass untouched.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections import Counter
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

log = logging.getLogger(__name__)

# Where the stock exporters log a failed export (module loggers of their public packages).
SDK_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
)


def failure_reason(args: Any) -> str | None:
    """A bounded label for what an SDK failure record says, read from its arguments by type."""
    values = args if isinstance(args, tuple) else (args,)
    for value in values:
        name = getattr(type(value), "__name__", "")
        if name == "StatusCode" and hasattr(value, "name"):  # grpc.StatusCode
            return str(value.name)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return f"http_{value}"
    for value in values:
        if isinstance(value, BaseException):
            return _exception_reason(value)
    return None


def _exception_reason(error: BaseException) -> str:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection_refused"
        if isinstance(current, TimeoutError) or "Timeout" in type(current).__name__:
            return "timeout"
        nested = [arg for arg in current.args if isinstance(arg, BaseException)]
        current = current.__cause__ or current.__context__ or (nested[0] if nested else None)
    return "connection_error" if "Connection" in type(error).__name__ else "error"


class ExportStatus:
    """Whether OTLP exports work, and failures by reason (read by the failures self-metric);
    ``failed``, the number of failed exports, versions what /metrics shows of it."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._local = threading.local()
        self.failing_reason: str | None = None
        self.failures: Counter[str] = Counter()
        self.failed = 0

    # The SDK's records of one export are captured on the exporting thread.
    def filter(self, record: logging.LogRecord) -> bool:
        capture: list[tuple[str | None, str]] | None = getattr(self._local, "capture", None)
        if capture is None or record.levelno < logging.WARNING:
            return True
        capture.append((failure_reason(record.args), _detail(record)))
        return log.isEnabledFor(logging.DEBUG)  # repeated in our own words below

    def export(self, inner_export: Any, metrics_data: MetricsData, **kwargs: Any) -> MetricExportResult:
        self._local.capture = capture = []
        try:
            result: MetricExportResult = inner_export(metrics_data, **kwargs)
        except Exception as error:  # an exporter bug must not kill the export thread
            log.debug("OTLP export raised", exc_info=True)
            capture.append((_exception_reason(error), repr(error)))
            result = MetricExportResult.FAILURE
        finally:
            self._local.capture = None
        if result is MetricExportResult.SUCCESS:
            self._succeeded()
        else:
            reasons = [reason for reason, _ in capture if reason]
            details = [detail for _, detail in capture if detail]
            reason = reasons[-1] if reasons else self.failing_reason or "failed"
            self._failed(reason, details[-1] if details else "")
        return result

    def counts(self) -> dict[str, int]:
        """Failed exports by reason, copied under the lock (the export thread adds reasons)."""
        with self._lock:
            return dict(self.failures)

    def _succeeded(self) -> None:
        with self._lock:
            was, self.failing_reason = self.failing_reason, None
        if was is not None:
            log.info("OTLP export to %s works again", self.target)

    def _failed(self, reason: str, detail: str) -> None:
        with self._lock:
            was, self.failing_reason = self.failing_reason, reason
            self.failures[reason] += 1
            self.failed += 1
        if was != reason:
            log.warning(
                "OTLP export to %s is failing: %s%s; retrying every interval",
                self.target,
                reason,
                f" ({detail})" if detail else "",
            )


def _detail(record: logging.LogRecord) -> str:
    """The human part of an SDK failure record: gRPC's error details or HTTP's reason phrase."""
    values = record.args if isinstance(record.args, tuple) else ()
    texts = [v for v in values if isinstance(v, str) and v and "://" not in v and v != "metrics"]
    return texts[-1][:200] if texts else ""


def build_exporter(protocol: str, status: ExportStatus) -> MetricExporter:
    """The stock exporter for ``protocol``, reporting to ``status``; reads OTEL_EXPORTER_OTLP_*."""
    transport = "http" if protocol == "http/protobuf" else "grpc"  # only the one asked for is imported
    base = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{transport}.metric_exporter")

    class Exporter(base.OTLPMetricExporter):  # type: ignore[misc,name-defined]
        def export(
            self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            inner = super().export
            return status.export(inner, metrics_data, timeout_millis=timeout_millis, **kwargs)

    for name in SDK_EXPORT_LOGGERS:
        # First in line: the gRPC exporter's own filter drops repeated records, and every failed
        # export must be seen to be counted with its reason.
        logging.getLogger(name).filters.insert(0, status)
    exporter: MetricExporter = Exporter()
    return exporter


def detach(status: ExportStatus) -> None:
    for name in SDK_EXPORT_LOGGERS:
        logging.getLogger(name).removeFilter(status)
