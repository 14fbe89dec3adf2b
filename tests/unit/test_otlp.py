"""OTLP failures reach the operator with their reason, once per change, and are counted.

The collectors here are real servers on loopback: a gRPC server speaking the OTLP metrics service
(opentelemetry-proto's generated stubs) and an HTTP server, each refusing or accepting on demand.
The agent's side is the stock SDK exporter, unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from otel_vmi_hv.config import load_settings
from otel_vmi_hv.export.otlp import failure_reason
from otel_vmi_hv.export.telemetry import Telemetry
from tests.exposition import parse_samples

FAILURES = "otel_vmi_hv_otlp_export_failures_total"


class Collector(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.refuse: grpc.StatusCode | None = grpc.StatusCode.UNAUTHENTICATED
        self.received = 0

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the service's method name
        if self.refuse is not None:
            context.abort(self.refuse, "token rejected")
        self.received += 1
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def grpc_collector() -> Iterator[tuple[Collector, int]]:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield collector, port
    server.stop(0)


def _telemetry(monkeypatch: pytest.MonkeyPatch, endpoint: str, protocol: str) -> Telemetry:
    env = {
        "OTEL_METRICS_EXPORTER": "prometheus,otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
        "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
        "NODE_NAME": "n",
    }
    for name, value in env.items():  # the SDK exporter reads the environment itself
        monkeypatch.setenv(name, value)
    telemetry = Telemetry(load_settings(env))
    telemetry.self_metrics.record_relist()  # something to export
    return telemetry


def _failures(telemetry: Telemetry) -> dict[str, float]:
    body = telemetry.scrape().body.decode()
    return {labels["reason"]: value for labels, value in parse_samples(body, FAILURES)}


def _export(telemetry: Telemetry) -> None:
    telemetry.meter_provider.force_flush(timeout_millis=5000)


def test_grpc_refusal_is_logged_once_with_its_status_and_counted(
    grpc_collector: tuple[Collector, int], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    collector, port = grpc_collector
    telemetry = _telemetry(monkeypatch, f"http://127.0.0.1:{port}", "grpc")
    caplog.set_level(logging.INFO, logger="otel_vmi_hv")
    try:
        for _ in range(3):
            _export(telemetry)
        failing = [r.getMessage() for r in caplog.records if "is failing" in r.getMessage()]
        assert len(failing) == 1, failing
        assert "UNAUTHENTICATED" in failing[0]
        assert "token rejected" in failing[0]
        assert _failures(telemetry) == {"UNAUTHENTICATED": 3}

        collector.refuse = None
        _export(telemetry)
        _export(telemetry)
        assert collector.received == 2
        recovered = [r for r in caplog.records if "works again" in r.getMessage()]
        assert len(recovered) == 1
        assert _failures(telemetry) == {"UNAUTHENTICATED": 3}
    finally:
        telemetry.shutdown(2)


def test_a_new_reason_is_logged_again(
    grpc_collector: tuple[Collector, int], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    collector, port = grpc_collector
    telemetry = _telemetry(monkeypatch, f"http://127.0.0.1:{port}", "grpc")
    caplog.set_level(logging.INFO, logger="otel_vmi_hv")
    try:
        _export(telemetry)
        collector.refuse = grpc.StatusCode.PERMISSION_DENIED
        _export(telemetry)
        failing = [r.getMessage() for r in caplog.records if "is failing" in r.getMessage()]
        assert ["UNAUTHENTICATED" in m for m in failing] == [True, False]
        assert "PERMISSION_DENIED" in failing[1]
        assert _failures(telemetry) == {"UNAUTHENTICATED": 1, "PERMISSION_DENIED": 1}
    finally:
        telemetry.shutdown(2)


class _Refusing(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(401, "Unauthorized")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_http_status_is_the_reason(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    telemetry = _telemetry(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}", "http/protobuf")
    caplog.set_level(logging.INFO, logger="otel_vmi_hv")
    try:
        _export(telemetry)
        _export(telemetry)
        assert _failures(telemetry) == {"http_401": 2}
        failing = [r.getMessage() for r in caplog.records if "is failing" in r.getMessage()]
        assert len(failing) == 1
        assert "http_401" in failing[0]
    finally:
        telemetry.shutdown(2)
        server.shutdown()
        server.server_close()


def test_an_absent_collector_is_named_as_such(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as probe:  # a port with nobody behind it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    telemetry = _telemetry(monkeypatch, f"http://127.0.0.1:{port}", "http/protobuf")
    caplog.set_level(logging.INFO, logger="otel_vmi_hv")
    try:
        _export(telemetry)
        assert set(_failures(telemetry)) == {"connection_refused"}
    finally:
        telemetry.shutdown(2)


def test_reasons_are_read_by_type_not_by_text() -> None:
    assert (
        failure_reason(("metrics", "http://x", grpc.StatusCode.DEADLINE_EXCEEDED, "d")) == "DEADLINE_EXCEEDED"
    )
    assert failure_reason(("metrics", 503, "Service Unavailable")) == "http_503"
    assert failure_reason((ConnectionError(ConnectionRefusedError(111, "refused")),)) == "connection_refused"
    assert failure_reason(("metrics",)) is None
