"""/metrics as real clients fetch it: the real Prometheus with the headers it sends by itself
(OpenMetrics first, gzip), curl with --compressed, and prometheus_client's parsers and promtool on
each format; the agent runs on libvirt's test driver with the shipped demo node."""

from __future__ import annotations

import gzip
import http.client
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from tests.agent_process import AgentProcess, demo_uri, wait_until
from tests.exposition import PROMETHEUS_2_42, PROMETHEUS_3, info_series
from tests.harness.prometheus import PrometheusServer, promtool_check_metrics
from tests.peers import require

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT = "text/plain; version=0.0.4; charset=utf-8"


@pytest.fixture(scope="module")
def demo_agent() -> Iterator[AgentProcess]:
    with AgentProcess({"OTEL_VMI_HV_SOURCE": "libvirt", "OTEL_VMI_HV_LIBVIRT_URI": demo_uri()}) as agent:
        agent.wait_ready()
        wait_until(lambda: len(info_series(agent.metrics())) == 6, 10, "all six demo domains detected")
        yield agent


def _get(agent: AgentProcess, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
    try:
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        assert response.status == 200
        return {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_prometheus_scrapes_openmetrics_gzipped_with_its_own_headers(
    demo_agent: AgentProcess, prometheus_factory: Callable[..., PrometheusServer]
) -> None:
    # What Prometheus will get for its headers: OpenMetrics, and big enough to be gzipped.
    headers, body = _get(demo_agent, {"Accept": PROMETHEUS_2_42, "Accept-Encoding": "gzip"})
    assert headers["content-type"] == OPENMETRICS
    assert headers["content-encoding"] == "gzip", "the demo body should be large enough to compress"
    assert headers["vary"] == "Accept, Accept-Encoding"
    assert gzip.decompress(body).endswith(b"\n# EOF\n")

    prometheus = prometheus_factory([f"127.0.0.1:{demo_agent.port}"])
    prometheus.wait_for("kubevirt_vmi_hypervisor_info", lambda rows: len(rows) == 6, timeout=30)
    # Only an OpenMetrics body has _created lines; Prometheus stores them as series of their own.
    (created,) = prometheus.wait_for("otel_vmi_hv_relists_created", bool, timeout=15)
    assert float(created["value"][1]) <= time.time()
    # The process metrics come after the cached part: anything after "# EOF" would fail the scrape.
    prometheus.wait_for("process_cpu_seconds_total", bool, timeout=15)
    prometheus.wait_for('otel_vmi_hv_detection_duration_seconds_bucket{le="+Inf"}', bool, timeout=15)
    (target,) = prometheus.targets()
    assert target["health"] == "up" and target["lastError"] == "", target


def test_curl_compressed_reads_the_whole_body(demo_agent: AgentProcess) -> None:
    """curl decodes only the first gzip member: the whole body must be one."""
    result = subprocess.run(
        [
            require("curl"),
            "-sS",
            "--fail",
            "--compressed",
            "-H",
            f"Accept: {PROMETHEUS_3}",
            f"{demo_agent.base_url}/metrics",
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )
    text = result.stdout.decode()
    assert text.endswith("\n# EOF\n")
    families = {family.name: family for family in om_families(text)}
    assert len(families["kubevirt_vmi_hypervisor_info"].samples) == 6
    assert "process_cpu_seconds" in families


def test_both_formats_parse_and_text_passes_promtool(demo_agent: AgentProcess) -> None:
    headers, om = _get(demo_agent, {"Accept": PROMETHEUS_3})
    assert headers["content-type"] == OPENMETRICS and "content-encoding" not in headers
    headers, text = _get(demo_agent, {"Accept": "*/*"})
    assert headers["content-type"] == TEXT
    om_names = {family.name for family in om_families(om.decode())}
    text_names = {family.name for family in text_string_to_metric_families(text.decode())}
    assert om_names == text_names and "kubevirt_vmi_hypervisor_info" in om_names
    rc, output = promtool_check_metrics(text)
    assert rc == 0, output


def test_the_recorded_accept_header_is_what_this_prometheus_sends(
    prometheus_factory: Callable[..., PrometheusServer],
) -> None:
    """The header the format tests use for Prometheus 2.42, checked against the real binary."""
    seen: list[dict[str, str]] = []
    scraped = threading.Event()

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers.items()))
            scraped.set()
            body = b"# TYPE up_probe gauge\nup_probe 1\n"
            self.send_response(200)
            self.send_header("Content-Type", TEXT)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        prometheus_factory([f"127.0.0.1:{server.server_port}"])
        assert scraped.wait(30), "Prometheus never scraped"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert seen[0]["Accept"] == PROMETHEUS_2_42
    assert seen[0]["Accept-Encoding"] == "gzip"
