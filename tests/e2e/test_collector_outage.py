"""An OTLP collector absent at start, then up, then gone: the Prometheus side never notices, exports
resume within one interval, and the log says so once per state change."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from tests.agent_process import AgentProcess, demo_uri, http_get, wait_until
from tests.exposition import info_series, parse_samples
from tests.harness.otlp_receiver import RotelReceiver
from tests.harness.ports import free_ports

pytestmark = pytest.mark.e2e
INTERVAL_S = 0.5


def _export_failures(agent: AgentProcess) -> float:
    samples = parse_samples(agent.metrics(), "otel_vmi_hv_otlp_export_failures_total")
    return sum(value for _, value in samples)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_collector_absent_then_up_then_gone(protocol: str) -> None:
    grpc_port, http_port = free_ports(2)
    endpoint = f"http://127.0.0.1:{grpc_port if protocol == 'grpc' else http_port}"
    env = {
        "OTEL_VMI_HV_SOURCE": "libvirt",
        "OTEL_VMI_HV_LIBVIRT_URI": demo_uri(),
        "OTEL_METRICS_EXPORTER": "prometheus,otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_METRIC_EXPORT_INTERVAL": str(int(INTERVAL_S * 1000)),
        "OTEL_EXPORTER_OTLP_TIMEOUT": "0.4",
    }
    receiver = RotelReceiver()
    with AgentProcess(env) as agent:
        agent.wait_ready()  # ready = listed; the detections finish just after
        wait_until(lambda: len(info_series(agent.metrics())) == 6, 10, "all six demo domains detected")
        expected = info_series(agent.metrics())
        assert len(expected) == 6
        wait_until(lambda: "OTLP export to" in agent.output(), 10, "the first failed export to be reported")
        rss_start = agent.rss_mib()
        deadline = time.monotonic() + 10 * INTERVAL_S
        while time.monotonic() < deadline:  # ten export intervals without a collector
            started = time.monotonic()
            assert info_series(agent.metrics()) == expected
            assert time.monotonic() - started < 0.5, "scrapes must not wait for OTLP"
            assert http_get(f"{agent.base_url}/readyz")[0] == 200
            time.sleep(INTERVAL_S / 2)
        assert agent.rss_mib() - rss_start < 10

        receiver.start(ports=(grpc_port, http_port))
        up_at = time.monotonic()
        try:
            export = receiver.wait_for(
                lambda rx: rx.latest_export("kubevirt_vmi_hypervisor_info"), timeout=10
            )
            resumed_after = time.monotonic() - up_at
            assert export is not None
            sent = {
                (p.attributes["namespace"], p.attributes["name"]): p.attributes["hypervisor_type"]
                for p in export.of("kubevirt_vmi_hypervisor_info")
            }
            assert sent == {key: labels["hypervisor_type"] for key, labels in expected.items()}
            # Resumes at the next interval (plus the exporter's own retry backoff, under a second).
            assert resumed_after < INTERVAL_S + 1.5
            wait_until(lambda: "works again" in agent.output(), 10, "the recovery to be logged")
            down_at = agent.output().count("is failing")  # before stopping: the next failure is quick
        finally:
            receiver.stop()
        wait_until(lambda: agent.output().count("is failing") == down_at + 1, 10, "the second outage logged")
        # Five more failed exports (counted by the agent itself): still one line per state change.
        failed = _export_failures(agent)
        wait_until(lambda: _export_failures(agent) >= failed + 5, 10, "five more failed exports")
        log = agent.output()
        assert info_series(agent.metrics()) == expected
    failing = len(re.findall(r"OTLP export to .* is failing", log))
    recovered = log.count("works again")
    assert (failing, recovered) == (2, 1), log


def test_sigterm_sends_a_last_export(otlp_receiver: RotelReceiver) -> None:
    env = {
        "OTEL_VMI_HV_SOURCE": "libvirt",
        "OTEL_VMI_HV_LIBVIRT_URI": demo_uri(),
        "OTEL_METRICS_EXPORTER": "prometheus,otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.grpc_endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "3600000",  # no periodic export would happen during the test
    }
    with AgentProcess(env) as agent:
        agent.wait_ready()
        wait_until(lambda: len(info_series(agent.metrics())) == 6, 10, "the demo node detected")
        served = {key: labels["hypervisor_type"] for key, labels in info_series(agent.metrics()).items()}
        assert otlp_receiver.points("kubevirt_vmi_hypervisor_info") == []
        assert agent.terminate() < 5.0
    points = otlp_receiver.wait_for(lambda rx: rx.points("kubevirt_vmi_hypervisor_info"), timeout=5)
    sent = {
        (p.attributes["namespace"], p.attributes["name"]): p.attributes["hypervisor_type"] for p in points
    }
    assert len(points) == len(sent) and sent == served, "the last export carries what /metrics served"


class SilentCollector:
    """A collector that accepts connections and reads requests but never answers them.

    ``request_sent`` is set once a whole export request arrived: for OTLP/HTTP the headers and
    the body; for gRPC a DATA frame after HTTP/2's connection preface (the only thing sent back
    is HTTP/2's own SETTINGS handshake). From then on the exporter waits for an answer that
    never comes: the export itself hangs, not the connection.
    """

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # length 0, type SETTINGS, no flags, stream 0
    SETTINGS_ACK = bytes([0, 0, 0, 4, 1, 0, 0, 0, 0])

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.request_sent = threading.Event()
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._connections.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        data = b""
        while not self.request_sent.is_set():
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            if not data and chunk.startswith(self.PREFACE[:3]):
                # gRPC sends its request only once the server's HTTP/2 SETTINGS came: an empty
                # SETTINGS frame, and the acknowledgement of the client's.
                conn.sendall(self.SETTINGS + self.SETTINGS_ACK)
            data += chunk
            if self._whole_request(data):
                self.request_sent.set()

    def _whole_request(self, data: bytes) -> bool:
        if data.startswith(self.PREFACE):
            position = len(self.PREFACE)
            while position + 9 <= len(data):
                length = int.from_bytes(data[position : position + 3], "big")
                frame_type = data[position + 3]
                if frame_type == 0 and position + 9 + length <= len(data):  # DATA: the request message
                    return True
                position += 9 + length
            return False
        head, separator, body = data.partition(b"\r\n\r\n")
        if not separator:
            return False
        lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        return bool(lengths) and len(body) >= int(lengths[0].split(b":")[1])

    def close(self) -> None:
        self.listener.close()
        for conn in self._connections:
            conn.close()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_sigterm_during_a_hung_export_still_exits_within_5s(protocol: str) -> None:
    collector = SilentCollector()
    env = {
        "OTEL_VMI_HV_SOURCE": "libvirt",
        "OTEL_VMI_HV_LIBVIRT_URI": demo_uri(),
        "OTEL_METRICS_EXPORTER": "prometheus,otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "30",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
    }
    try:
        with AgentProcess(env) as agent:
            agent.wait_ready()
            assert collector.request_sent.wait(10), "no export reached the collector"
            assert agent.terminate() < 5.0
            assert agent.process is not None and agent.process.returncode == 0, agent.output()
    finally:
        collector.close()
