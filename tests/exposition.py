"""Parsing of the Prometheus text format, strict enough to catch escaping mistakes; the Accept
headers Prometheus sends."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Observation

if TYPE_CHECKING:
    from otel_vmi_hv.agent import Agent

# What Debian's Prometheus 2.42 sends (recorded from the binary the tests run).
PROMETHEUS_2_42 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
# Prometheus 2.49 and later build Accept from scrape_protocols (scrape/scrape.go, acceptHeader):
# weights from 0.<number of known protocols + 1> down, then */*. The 2.x default protocols:
PROMETHEUS_2_55 = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
# Prometheus 3.x: one more protocol (PrometheusText1.0.0) and the escaping scheme (allow-utf-8 by
# default) on the 1.0.0 formats.
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
# Prometheus 3.x with scrape_native_histograms: protobuf first, which the agent does not serve.
PROMETHEUS_3_PROTO_FIRST = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,"
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def _unescape(value: str) -> str:
    return re.sub(r"\\([\\\"n])", lambda m: {"\\": "\\", '"': '"', "n": "\n"}[m.group(1)], value)


def parse_samples(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``metric`` as (labels, value); raises on a line that does not parse."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise AssertionError(f"unparseable exposition line: {line!r}")
        if match.group(1) != metric:
            continue
        labels: dict[str, str] = {}
        body = match.group(2) or ""
        position = 0
        while position < len(body):
            label = _LABEL.match(body, position)
            if not label:
                raise AssertionError(f"bad label syntax in {line!r} at {position}")
            labels[label.group(1)] = _unescape(label.group(2))
            position = label.end()
        samples.append((labels, float(match.group(3))))
    return samples


def info_series(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """kubevirt_vmi_hypervisor_info samples keyed by (namespace, name); asserts value 1 and no duplicates."""
    series: dict[tuple[str, str], dict[str, str]] = {}
    for labels, value in parse_samples(text, "kubevirt_vmi_hypervisor_info"):
        assert value == 1.0, (labels, value)
        key = (labels.get("namespace", ""), labels.get("name", ""))
        assert key not in series, f"duplicate series for {key}"
        series[key] = labels
    return series


def count_collections(agent: Agent) -> list[int]:
    """Grows at every collection of the agent's MeterProvider (an instrument of its own, no points)."""
    made: list[int] = []

    def observe(_options: CallbackOptions) -> list[Observation]:
        made.append(1)
        return []

    assert agent.telemetry is not None
    agent.telemetry.meter_provider.get_meter("probe").create_observable_gauge("probe", [observe])
    return made
