"""The ServiceMonitor's relabelings, applied by a real Prometheus to a target labelled as the
Prometheus Operator labels it: the agent's own `namespace` and `node` labels must survive."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.harness.prometheus import PrometheusServer
from tests.kubernetes_manifests import JOB, snake_relabelings, the

AGENT_NAMESPACE = "otel-vmi-hv"
EXPOSITION = (
    "# HELP kubevirt_vmi_hypervisor_info Information about the hypervisor type used by a VMI\n"
    "# TYPE kubevirt_vmi_hypervisor_info gauge\n"
    "kubevirt_vmi_hypervisor_info"
    '{hypervisor_type="qemu-tcg",name="web",namespace="default",node="worker-1"} 1\n'
    "# HELP otel_vmi_hv_relists_total Full VMI listings reconciled into the cache\n"
    "# TYPE otel_vmi_hv_relists_total counter\n"
    "otel_vmi_hv_relists_total 3\n"
)


class _Exposition(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = EXPOSITION.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def exposition() -> Iterator[int]:
    """A loopback server answering EXPOSITION; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exposition)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_service_monitor_keeps_the_agents_namespace_and_node_labels(
    prometheus_factory: Callable[..., PrometheusServer], exposition: int
) -> None:
    (endpoint,) = the("ServiceMonitor")["spec"]["endpoints"]
    # The labels the Prometheus Operator gives every target of a ServiceMonitor, plus the pod's node
    # as Kubernetes service discovery would provide it.
    target_labels = {
        "namespace": AGENT_NAMESPACE,
        "service": "otel-vmi-hv",
        "pod": "otel-vmi-hv-abcde",
        "container": "otel-vmi-hv",
        "endpoint": endpoint["port"],
        "__meta_kubernetes_pod_node_name": "worker-1",
    }
    job = {
        "job_name": JOB,
        "honor_labels": endpoint.get("honorLabels", False),
        "metrics_path": endpoint.get("path", "/metrics"),
        "static_configs": [{"targets": [f"127.0.0.1:{exposition}"], "labels": target_labels}],
        "relabel_configs": snake_relabelings(endpoint.get("relabelings", [])),
        "metric_relabel_configs": snake_relabelings(endpoint.get("metricRelabelings", [])),
    }
    prometheus = prometheus_factory(extra_scrape_configs=[job])
    (series,) = prometheus.wait_for("kubevirt_vmi_hypervisor_info", timeout=60)
    (self_metric,) = prometheus.wait_for("otel_vmi_hv_relists_total", timeout=60)
    labels = series["metric"]
    assert labels["namespace"] == "default", "the VMI's namespace must survive the target's"
    assert labels["node"] == "worker-1" and labels["name"] == "web"
    assert labels["job"] == JOB
    assert not [name for name in labels if name.startswith("exported_")]
    assert self_metric["metric"]["namespace"] == AGENT_NAMESPACE
    assert self_metric["metric"]["node"] == "worker-1", "self-metrics get the pod's node"
