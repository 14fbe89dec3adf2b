"""The agent's own text renderer against the stock OpenTelemetry Prometheus exporter, and its cache."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from otel_vmi_hv.config import load_settings
from otel_vmi_hv.model import Detection, DetectionMethod, Series
from otel_vmi_hv.telemetry import Telemetry
from otel_vmi_hv.tracker import Snapshot

ODD_NAMES = ["plain", 'with "quotes"', "back\\slash", "new\nline", "ünïcödé-名前", "tab\there", ""]


class State:
    def __init__(self) -> None:
        self.snapshot = Snapshot(0, (), 0)
        self.states: dict[str, str] = {}
        self.state_version = 0
        self.last_sync: float | None = None

    def set_rows(self, rows: list[Series]) -> None:
        self.snapshot = Snapshot(self.snapshot.version + 1, tuple(rows), 0)


@pytest.fixture
def setup() -> Iterator[tuple[Telemetry, State, CollectorRegistry]]:
    state = State()
    registry = CollectorRegistry(auto_describe=False)
    stock = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=registry)
    telemetry = Telemetry(
        load_settings({"OTEL_METRICS_EXPORTER": "prometheus", "NODE_NAME": "n"}),
        lambda: state.snapshot,
        connection_states=lambda: state.states,
        connection_state_version=lambda: state.state_version,
        last_sync=lambda: state.last_sync,
        extra_readers=[stock],
    )
    yield telemetry, state, registry
    telemetry.shutdown(2)


def _labels(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    # Bucket bounds are numbers: "1" and "1.0" are the same bound to Prometheus.
    return tuple(sorted((k, repr(float(v)) if k == "le" else v) for k, v in labels.items()))


def _samples(text: str) -> dict[str, object]:
    families: dict[str, object] = {}
    for family in text_string_to_metric_families(text):
        samples = sorted((s.name, _labels(s.labels), s.value) for s in family.samples)
        families[family.name] = (family.type, family.documentation, samples)
    return families


def _fill(telemetry: Telemetry, state: State) -> None:
    rows = [
        Series(t, name, ns, "node-1")
        for t in ("kvm", "qemu-tcg")
        for ns in ("a", 'b"x')
        for name in ODD_NAMES
    ]
    state.set_rows(rows)
    state.states = {"u1": "connected", "u2": "hung"}
    state.state_version += 1
    state.last_sync = 1_790_000_000.25
    metrics = telemetry.self_metrics
    metrics.record_detection(Detection("kvm", DetectionMethod.LIBVIRT), 0.004)
    metrics.record_detection(Detection("unknown", DetectionMethod.NONE, "timeout"), 5.0)
    metrics.record_watch_restart("expired")
    metrics.record_relist()


def test_same_samples_as_the_stock_exporter(setup) -> None:
    telemetry, state, registry = setup
    _fill(telemetry, state)
    ours = _samples(telemetry.render_prometheus().decode())
    stock = _samples(generate_latest(registry).decode())
    assert ours == stock
    assert len(ours["kubevirt_vmi_hypervisor_info"][2]) == 2 * 2 * len(ODD_NAMES)  # type: ignore[index]


def test_label_values_survive_escaping_exactly(setup) -> None:
    telemetry, state, _ = setup
    _fill(telemetry, state)
    (family,) = [
        f
        for f in text_string_to_metric_families(telemetry.render_prometheus().decode())
        if f.name == "kubevirt_vmi_hypervisor_info"
    ]
    assert {s.labels["name"] for s in family.samples} == set(ODD_NAMES)
    assert {s.labels["namespace"] for s in family.samples} == {"a", 'b"x'}


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)
def test_promtool_accepts_the_exposition(setup) -> None:
    telemetry, state, _ = setup
    _fill(telemetry, state)
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=telemetry.render_prometheus(), capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cached_body_is_byte_identical_to_a_fresh_collection(setup) -> None:
    telemetry, state, _ = setup
    _fill(telemetry, state)
    first = telemetry.render_prometheus()
    collections = telemetry.prometheus_collections
    assert telemetry.render_prometheus() is first, "unchanged state must not collect again"
    assert telemetry.prometheus_collections == collections
    assert telemetry._prometheus is not None
    assert telemetry._prometheus.render() == first


@pytest.mark.parametrize("change", ["snapshot", "detection", "connection", "sync", "relist"])
def test_any_change_invalidates_the_cached_body(setup, change: str) -> None:
    telemetry, state, _ = setup
    _fill(telemetry, state)
    before = telemetry.render_prometheus()
    if change == "snapshot":
        state.set_rows([Series("kvm", "only", "a", "node-1")])
    elif change == "detection":
        telemetry.self_metrics.record_detection(Detection("kvm", DetectionMethod.LIBVIRT), 0.001)
    elif change == "connection":
        state.states = {"u1": "connected"}
        state.state_version += 1
    elif change == "sync":
        state.last_sync = 1_790_000_100.0
    else:
        telemetry.self_metrics.record_relist()
    after = telemetry.render_prometheus()
    assert after != before
    assert telemetry._prometheus is not None
    assert telemetry._prometheus.render() == after
