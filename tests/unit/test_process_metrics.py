"""Process metrics: the names Prometheus users know, values that agree with the kernel's."""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from otel_vmi_hv.export.process_metrics import prometheus_text, register_process_metrics
from otel_vmi_hv.export.prometheus_text import family_name, render

EXPECTED = {
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_start_time_seconds": "gauge",
    "process_threads": "gauge",
}


@pytest.fixture
def readers() -> Iterator[tuple[InMemoryMetricReader, CollectorRegistry]]:
    registry = CollectorRegistry(auto_describe=False)
    stock = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=registry)
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory, stock], shutdown_on_exit=False)
    register_process_metrics(provider.get_meter("otel-vmi-hv"))
    yield memory, registry
    provider.shutdown()


def _values(memory: InMemoryMetricReader) -> dict[str, float]:
    data = memory.get_metrics_data()
    assert data is not None
    values = {}
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                name = family_name(metric.name, metric.unit or "")
                if isinstance(metric.data, Sum) and not name.endswith("_total"):
                    name += "_total"
                (point,) = metric.data.data_points
                values[name] = float(point.value)  # type: ignore[union-attr]
    return values


def _status() -> dict[str, int]:
    with open("/proc/self/status") as status:
        return {
            key: int(rest.split()[0])
            for key, _, rest in (line.partition(":") for line in status)
            if key in ("VmRSS", "VmSize", "Threads")
        }


def _within(value: float, expected: float, share: float = 0.10) -> bool:
    return abs(value - expected) <= share * abs(expected)


def test_names_and_types_match_every_prometheus_exporter_with_both_renderers(
    readers: tuple[InMemoryMetricReader, CollectorRegistry],
) -> None:
    memory, registry = readers
    stock = {
        family.name: family.type
        for family in text_string_to_metric_families(generate_latest(registry).decode())
    }
    # prometheus_client's parser names counters without their _total suffix.
    stock = {name + "_total" if kind == "counter" else name: kind for name, kind in stock.items()}
    ours = {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in text_string_to_metric_families(render(memory.get_metrics_data()).decode())
    }
    assert stock == EXPECTED
    assert ours == EXPECTED


def test_values_agree_with_proc_within_ten_percent(
    readers: tuple[InMemoryMetricReader, CollectorRegistry],
) -> None:
    memory, _ = readers
    ballast = bytearray(64 * 2**20)  # 64 MiB touched, so memory readings are far from zero
    for offset in range(0, len(ballast), 4096):
        ballast[offset] = 1
    files = [open(os.devnull) for _ in range(50)]  # noqa: SIM115 - held open on purpose
    stop = threading.Event()
    sleepers = [threading.Thread(target=stop.wait) for _ in range(8)]
    for sleeper in sleepers:
        sleeper.start()
    busy_until = time.process_time() + 0.3
    while time.process_time() < busy_until:
        pass
    try:
        values = _values(memory)
        status = _status()
        times = os.times()
        open_now = len(os.listdir("/proc/self/fd")) - 1  # listdir's own descriptor
        elapsed = int(
            subprocess.run(
                ["ps", "-o", "etimes=", "-p", str(os.getpid())], capture_output=True, text=True, check=True
            ).stdout
        )
    finally:
        stop.set()
        for sleeper in sleepers:
            sleeper.join()
        for file in files:
            file.close()
    assert _within(values["process_resident_memory_bytes"], status["VmRSS"] * 1024)
    assert _within(values["process_virtual_memory_bytes"], status["VmSize"] * 1024)
    assert _within(values["process_cpu_seconds_total"], times.user + times.system)
    assert _within(values["process_threads"], status["Threads"])
    assert _within(values["process_open_fds"], open_now)
    assert values["process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert abs(values["process_start_time_seconds"] - (time.time() - elapsed)) <= 2
    del ballast


def test_values_follow_the_process_between_collections(
    readers: tuple[InMemoryMetricReader, CollectorRegistry],
) -> None:
    memory, _ = readers
    before = _values(memory)
    files = [open(os.devnull) for _ in range(40)]  # noqa: SIM115 - held open on purpose
    try:
        after = _values(memory)
    finally:
        for file in files:
            file.close()
    assert after["process_open_fds"] - before["process_open_fds"] == 40
    assert after["process_cpu_seconds_total"] >= before["process_cpu_seconds_total"]


def test_openmetrics_families_and_units_match_the_stock_exporter(
    readers: tuple[InMemoryMetricReader, CollectorRegistry],
) -> None:
    """What /metrics appends before ``# EOF``: the families the stock exporter gives in OpenMetrics."""
    _, registry = readers

    def families(text: str) -> dict[str, tuple[str, str, str, list[str]]]:
        return {
            f.name: (f.type, f.unit, f.documentation, [s.name for s in f.samples]) for f in om_families(text)
        }

    ours = families(prometheus_text(openmetrics=True).decode() + "# EOF\n")
    assert ours == families(om_latest(registry).decode())
    assert ours["process_cpu_seconds"][:2] == ("counter", "seconds")
    assert ours["process_resident_memory_bytes"][:2] == ("gauge", "bytes")
    assert ours["process_threads"][:2] == ("gauge", "")
