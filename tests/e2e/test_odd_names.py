"""Domain names a tenant or an admin could choose, however odd, stay exact end to end: the
exposition stays valid for promtool and Prometheus's own parser, OTLP attribute values are exact."""

from __future__ import annotations

import uuid
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent_process import AgentProcess, wait_until
from tests.harness.otlp_receiver import RotelReceiver
from tests.harness.prometheus import promtool_check_metrics

pytestmark = pytest.mark.e2e
ODD = ['q"uote', "back\\slash", "new\nline", "ünïcödé-名前", "tab\there", "sp ace", "<angle>&amp;", "end\\"]


def _node_file(tmp_path: Path) -> Path:
    domains = "".join(
        f"<domain type='qemu'><name>{escape(name).replace(chr(10), '&#10;').replace(chr(9), '&#9;')}</name>"
        f"<uuid>{uuid.uuid4()}</uuid><memory>1024</memory><os><type>hvm</type></os></domain>"
        for name in ODD
    )
    path = tmp_path / "odd-node.xml"
    path.write_text(f"<node>{domains}</node>")
    return path


def test_odd_domain_names_are_exact_in_both_outputs(tmp_path: Path, otlp_receiver: RotelReceiver) -> None:
    env = {
        "OTEL_VMI_HV_SOURCE": "libvirt",
        "OTEL_VMI_HV_LIBVIRT_URI": f"test://{_node_file(tmp_path)}",
        "OTEL_METRICS_EXPORTER": "prometheus,otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.grpc_endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }
    with AgentProcess(env) as agent:
        agent.wait_ready()

        def names_in_metrics() -> set[str]:
            families = {f.name: f for f in text_string_to_metric_families(agent.metrics())}
            family = families.get("kubevirt_vmi_hypervisor_info")
            return {s.labels["name"] for s in family.samples} if family else set()

        wait_until(
            lambda: names_in_metrics() == set(ODD), 15, "every odd name in /metrics, unescaped exactly"
        )
        rc, output = promtool_check_metrics(agent.metrics())
        assert rc == 0, output

        def names_in_otlp() -> set[str]:
            export = otlp_receiver.latest_export("kubevirt_vmi_hypervisor_info")
            return (
                {str(p.attributes["name"]) for p in export.of("kubevirt_vmi_hypervisor_info")}
                if export
                else set()
            )

        wait_until(lambda: names_in_otlp() == set(ODD), 15, "every odd name over OTLP, exactly")
        points = otlp_receiver.points("kubevirt_vmi_hypervisor_info")
        assert all(p.attributes["namespace"] == "" for p in points)
        assert otlp_receiver.errors == []
