"""An OTLP collector absent at start, then up, then gone: the Prometheus side never notices, exports
resume within one interval, and the log says so once per state change."""

from __future__ import annotations

import re
import time

import pytest

from tests.agent_process import AgentProcess, demo_uri, http_get, wait_until
from tests.exposition import info_series
from tests.harness.otlp_receiver import RotelReceiver
from tests.harness.ports import free_ports

pytestmark = pytest.mark.e2e
INTERVAL_S = 0.5


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
            receiver.wait_for(lambda rx: rx.points("kubevirt_vmi_hypervisor_info"), timeout=10)
            resumed_after = time.monotonic() - up_at
            # Resumes at the next interval (plus the exporter's own retry backoff, under a second).
            assert resumed_after < INTERVAL_S + 1.5
            wait_until(lambda: "works again" in agent.output(), 10, "the recovery to be logged")
        finally:
            receiver.stop()
        down_at = agent.output().count("is failing")
        wait_until(lambda: agent.output().count("is failing") == down_at + 1, 10, "the second outage logged")
        time.sleep(5 * INTERVAL_S)  # five more failing intervals: still one line per state change
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
        assert otlp_receiver.points("kubevirt_vmi_hypervisor_info") == []
        assert agent.terminate() < 5.0
    points = otlp_receiver.wait_for(lambda rx: rx.points("kubevirt_vmi_hypervisor_info"), timeout=5)
    assert len(points) == 6


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_sigterm_during_a_hung_export_still_exits_within_5s(protocol: str) -> None:
    """A collector that accepts connections and never answers: every export hangs until its timeout."""
    import socket

    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)  # never accepted: the kernel completes handshakes, nothing ever answers
    port = blackhole.getsockname()[1]
    env = {
        "OTEL_VMI_HV_SOURCE": "libvirt",
        "OTEL_VMI_HV_LIBVIRT_URI": demo_uri(),
        "OTEL_METRICS_EXPORTER": "prometheus,otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "30",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
    }
    try:
        with AgentProcess(env) as agent:
            agent.wait_ready()
            time.sleep(1)  # the first export is now stuck waiting for an answer
            assert agent.terminate() < 5.0
            assert agent.process is not None and agent.process.returncode == 0, agent.output()
    finally:
        blackhole.close()
