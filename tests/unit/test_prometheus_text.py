"""The agent's own renderer (text 0.0.4 and OpenMetrics) against the stock OpenTelemetry Prometheus
exporter, and its cache."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from otel_vmi_hv.config import load_settings
from otel_vmi_hv.export.prometheus_text import PrometheusTextReader, family_name, number
from otel_vmi_hv.export.telemetry import Telemetry
from otel_vmi_hv.interfaces import Snapshot
from otel_vmi_hv.model import VMI, Detection, DetectionMethod, FailureReason, LibvirtTarget, Series
from tests.exposition import PROMETHEUS_3, parse_samples
from tests.peers import require
from tests.telemetry_inputs import FixedInputs

ODD_NAMES = ["plain", 'with "quotes"', "back\\slash", "new\nline", "ünïcödé-名前", "tab\there", ""]


class State(FixedInputs):
    """Stands in for the tracker, the libvirt connections and the emulation facts; each can change."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = "node_without_kvm"
        self.connection_states: dict[str, str] = {}

    def set_rows(self, rows: list[Series]) -> None:
        emulated = tuple(
            (row, VMI(f"{row.namespace}/{row.name}", row.namespace, row.name, LibvirtTarget("", "", "")))
            for row in rows
            if row.hypervisor_type == "qemu-tcg"
        )
        self.current = Snapshot(self.current.version + 1, tuple(rows), 0, 0, emulated)

    def set_states(self, states: dict[str, str]) -> None:
        self.connection_states = dict(states)

    def set_reason(self, reason: str) -> None:
        self.reason = reason
        self.version += 1

    def states(self) -> dict[str, str]:
        return dict(self.connection_states)

    def node_kvm_available(self) -> bool | None:
        return False

    def node_accelerator_available(self) -> tuple[str, bool] | None:
        return ("kvm", False)

    def explanations(self) -> dict[str, tuple[str, str]]:
        return {vmi.key: (self.reason, "no devices.kubevirt.io/kvm") for _, vmi in self.current.emulated}


@pytest.fixture
def setup() -> Iterator[tuple[Telemetry, State, CollectorRegistry]]:
    state = State()
    registry = CollectorRegistry(auto_describe=False)
    stock = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=registry)
    telemetry = Telemetry(
        load_settings({"OTEL_METRICS_EXPORTER": "prometheus", "NODE_NAME": "n"}),
        extra_readers=[stock],
    )
    telemetry.register_vmi_instruments(state, state, state)
    yield telemetry, state, registry
    telemetry.shutdown(2)


def collections(telemetry: Telemetry) -> list[int]:
    """Grows by one at every collection of the MeterProvider (an instrument with no points)."""
    made: list[int] = []

    def observe(_options: CallbackOptions) -> list[Observation]:
        made.append(1)
        return []

    telemetry.meter_provider.get_meter("probe").create_observable_gauge("probe", [observe])
    return made


def telemetry_rows(state: State) -> tuple[Series, ...]:
    return state.current.series


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
    state.set_states({"u1": "connected", "u2": "hung"})
    metrics = telemetry.self_metrics
    metrics.record_sync(1_790_000_000.25)
    metrics.record_detection(Detection("kvm", DetectionMethod.LIBVIRT), 0.004)
    metrics.record_detection(Detection("unknown", DetectionMethod.NONE, FailureReason.TIMEOUT), 5.0)
    metrics.record_watch_restart("expired")
    metrics.record_relist()


def _split_process(families: dict[str, object]) -> tuple[dict[str, object], set[str]]:
    """The collected families, and the names of the process ones (their values move every read)."""
    process = {name for name in families if name.startswith("process_")}
    return {k: v for k, v in families.items() if k not in process}, process


def test_same_samples_as_the_stock_exporter(setup) -> None:
    telemetry, state, registry = setup
    _fill(telemetry, state)
    ours, our_process = _split_process(_samples(telemetry.scrape().body.decode()))
    stock, stock_process = _split_process(_samples(generate_latest(registry).decode()))
    assert our_process == stock_process, "process metrics named as the stock exporter names them"
    assert len(our_process) == 7
    assert ours == stock
    # every row given is exported, and the companion series names the emulated ones
    info = {
        (dict(labels)["namespace"], dict(labels)["name"], dict(labels)["hypervisor_type"])
        for _, labels, _ in ours["kubevirt_vmi_hypervisor_info"][2]  # type: ignore[index]
    }
    assert info == {(r.namespace, r.name, r.hypervisor_type) for r in telemetry_rows(state)}
    emulation = {
        (dict(labels)["namespace"], dict(labels)["name"], dict(labels)["reason"])
        for _, labels, _ in ours["otel_vmi_hv_vmi_emulation_info"][2]  # type: ignore[index]
    }
    assert emulation == {
        (r.namespace, r.name, "node_without_kvm")
        for r in telemetry_rows(state)
        if r.hypervisor_type == "qemu-tcg"
    }
    assert ours["otel_vmi_hv_node_kvm_available"][2] == [("otel_vmi_hv_node_kvm_available", (), 0.0)]  # type: ignore[index]
    assert ours["otel_vmi_hv_node_accelerator_available"][2] == [  # type: ignore[index]
        ("otel_vmi_hv_node_accelerator_available", (("device", "kvm"),), 0.0)
    ]


def test_label_values_survive_escaping_exactly(setup) -> None:
    telemetry, state, _ = setup
    _fill(telemetry, state)
    (family,) = [
        f
        for f in text_string_to_metric_families(telemetry.scrape().body.decode())
        if f.name == "kubevirt_vmi_hypervisor_info"
    ]
    assert {s.labels["name"] for s in family.samples} == set(ODD_NAMES)
    assert {s.labels["namespace"] for s in family.samples} == {"a", 'b"x'}


def test_promtool_accepts_the_exposition(setup) -> None:
    telemetry, state, _ = setup
    _fill(telemetry, state)
    result = subprocess.run(
        [require("promtool"), "check", "metrics"],
        input=telemetry.scrape().body,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _collected(body: bytes) -> bytes:
    """The body without the process metrics, which are read afresh at every scrape."""
    return body[: body.index(b"# HELP process_")]


def test_cached_body_is_byte_identical_to_a_fresh_collection(setup) -> None:
    telemetry, state, _ = setup
    _fill(telemetry, state)
    first = telemetry.scrape().body
    made = collections(telemetry)
    second = telemetry.scrape().body
    assert not made, "unchanged state must not collect again"
    assert _collected(second) == _collected(first)
    assert telemetry._prometheus is not None
    assert telemetry._prometheus.render() == _collected(first)


def test_process_metrics_are_fresh_at_every_scrape_of_an_unchanged_state(setup) -> None:
    telemetry, state, _ = setup
    _fill(telemetry, state)
    telemetry.scrape()
    threads = [threading.Thread(target=threading.Event().wait, args=(5,), daemon=True) for _ in range(3)]
    before = parse_samples(telemetry.scrape().body.decode(), "process_threads")[0][1]
    for thread in threads:
        thread.start()
    after = parse_samples(telemetry.scrape().body.decode(), "process_threads")[0][1]
    assert after == before + 3, "three more threads, seen without any VMI change"


@pytest.mark.parametrize(
    "change",
    ["snapshot", "detection", "connection", "sync", "relist", "label", "facts", "event", "handler_error"],
)
def test_any_change_invalidates_the_cached_body(setup, change: str) -> None:
    telemetry, state, _ = setup
    _fill(telemetry, state)
    before = telemetry.scrape().body
    if change == "snapshot":
        state.set_rows([Series("kvm", "only", "a", "node-1")])
    elif change == "detection":
        telemetry.self_metrics.record_detection(Detection("kvm", DetectionMethod.LIBVIRT), 0.001)
    elif change == "connection":
        state.set_states({"u1": "connected"})
    elif change == "sync":
        telemetry.self_metrics.record_sync(1_790_000_100.0)
    elif change == "label":
        telemetry.self_metrics.record_label_replaced()
    elif change == "facts":
        state.set_reason("kvm_not_requested")
    elif change == "event":
        telemetry.self_metrics.record_event("written")
    elif change == "handler_error":
        telemetry.self_metrics.record_handler_error()
    else:
        telemetry.self_metrics.record_relist()
    after = telemetry.scrape().body
    assert _collected(after) != _collected(before)
    assert telemetry._prometheus is not None
    assert telemetry._prometheus.render() == _collected(after)


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("otel_vmi_hv_detection_duration", "s"),
        ("already_seconds", "s"),
        ("process.resident_memory", "By"),
        ("rate", "m/s"),
        ("per_thing", "1/s"),
        ("ratio", "1"),
        ("annotated", "{vmi}"),
        ("percent", "%"),
        ("odd-name.with/chars", "weird unit"),
        ("bytes_total", "KiBy"),
    ],
)
def test_names_follow_the_stock_exporter(name: str, unit: str) -> None:
    """The naming rules are the agent's own code: compared with the stock exporter's output."""
    from opentelemetry.sdk.metrics import MeterProvider

    registry = CollectorRegistry(auto_describe=False)
    reader = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=registry)
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    provider.get_meter("t").create_gauge(name, unit=unit).set(1)
    (stock_name,) = [f.name for f in text_string_to_metric_families(generate_latest(registry).decode())]
    assert family_name(name, unit) == stock_name
    provider.shutdown()


def test_sample_values_are_written_as_the_prometheus_client_writes_them() -> None:
    """The number formatting is the agent's own code: compared with prometheus_client's."""
    import math
    import random
    import struct

    from prometheus_client.utils import floatToGoString

    rng = random.Random(17)
    values = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-7, 123456.0, 1234567.0, 1e21, 2.5e6, 3.14159e300, 5e-324]
    values += [math.inf, -math.inf, math.nan, 1, 10**6, 10**7, -(10**7), True]
    values += [rng.uniform(-1e9, 1e9) for _ in range(500)] + [rng.expovariate(1e-6) for _ in range(500)]
    values += [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(2000)]  # every exponent
    for value in values:
        assert number(value) == floatToGoString(value), value


# ---------------------------------------------------------------------------------- OpenMetrics


def _openmetrics(telemetry: Telemetry) -> str:
    scrape = telemetry.scrape(PROMETHEUS_3, "")
    assert scrape.content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    return scrape.body.decode()


Samples = list[tuple[str, tuple[tuple[str, str], ...], float]]


def _om_families(text: str) -> dict[str, tuple[str, str, str, Samples]]:
    """OpenMetrics families by name: (type, help, unit, samples without _created)."""
    families = {}
    for family in om_families(text):
        samples = sorted(
            (s.name, _labels(s.labels), s.value) for s in family.samples if not s.name.endswith("_created")
        )
        families[family.name] = (family.type, family.documentation, family.unit, samples)
    return families


def test_openmetrics_has_the_stock_exporters_families_units_and_samples(setup) -> None:
    telemetry, state, registry = setup
    _fill(telemetry, state)
    ours, our_process = _split_process(_om_families(_openmetrics(telemetry)))  # type: ignore[arg-type]
    stock, stock_process = _split_process(_om_families(om_latest(registry).decode()))  # type: ignore[arg-type]
    assert ours == stock
    assert our_process == stock_process, "the same process families, with their types and units"
    assert ours["otel_vmi_hv_detection_duration_seconds"][2] == "seconds"  # type: ignore[index]
    assert ours["otel_vmi_hv_relists"][0] == "counter"  # type: ignore[index]


def test_openmetrics_and_text_carry_the_same_samples(setup) -> None:
    telemetry, state, _ = setup
    _fill(telemetry, state)
    text = {
        family.name: sorted((s.name, _labels(s.labels), s.value) for s in family.samples)
        for family in text_string_to_metric_families(telemetry.scrape().body.decode())
        if not family.name.startswith("process_")
    }
    om = {name: f[3] for name, f in _om_families(_openmetrics(telemetry)).items() if name[:8] != "process_"}
    assert om == text


def test_openmetrics_ends_with_eof_after_the_process_metrics(setup) -> None:
    telemetry, state, _ = setup
    _fill(telemetry, state)
    body = _openmetrics(telemetry)
    assert body.endswith("\n# EOF\n") and body.count("# EOF") == 1
    assert body.index("# HELP process_cpu_seconds ") < body.index("# EOF")
    assert "# EOF" not in telemetry.scrape().body.decode()


def test_counters_and_histograms_carry_created_from_their_start(setup) -> None:
    """_created is when the series started counting: it stays put while the counter grows."""
    telemetry, state, _ = setup
    started = time.time()
    _fill(telemetry, state)
    filled = time.time()

    def created(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, _labels(s.labels)): s.value
            for family in om_families(body)
            for s in family.samples
            if s.name.endswith("_created")
        }

    first = created(_openmetrics(telemetry))
    names = {name for name, _ in first}
    assert names == {
        "otel_vmi_hv_relists_created",
        "otel_vmi_hv_watch_restarts_created",
        "otel_vmi_hv_detection_errors_created",
        "otel_vmi_hv_detection_duration_seconds_created",
    }
    assert all(started <= value <= filled for value in first.values()), first
    telemetry.self_metrics.record_relist()
    later = _openmetrics(telemetry)
    assert created(later) == first
    assert parse_samples(later.replace("# EOF\n", ""), "otel_vmi_hv_relists_total") == [({}, 2.0)]


def test_openmetrics_label_values_survive_escaping_exactly(setup) -> None:
    telemetry, state, _ = setup
    _fill(telemetry, state)
    (family,) = [f for f in om_families(_openmetrics(telemetry)) if f.name == "kubevirt_vmi_hypervisor_info"]
    assert {s.labels["name"] for s in family.samples} == set(ODD_NAMES)
    assert {s.labels["namespace"] for s in family.samples} == {"a", 'b"x'}


def test_help_text_is_escaped_for_each_format() -> None:
    """OpenMetrics escapes a double quote in HELP, text 0.0.4 must not (its parser keeps the backslash)."""
    from opentelemetry.sdk.metrics import MeterProvider

    description = 'say "hi"\\now\nnext line'
    reader = PrometheusTextReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    provider.get_meter("t").create_counter("greetings", unit="{greeting}", description=description).add(1)
    (text,) = text_string_to_metric_families(reader.render().decode())
    (om,) = om_families(reader.render(openmetrics=True).decode() + "# EOF\n")
    assert text.documentation == description
    assert om.documentation == description
    provider.shutdown()


def test_each_format_is_cached_apart_and_byte_identical_to_a_fresh_collection(setup) -> None:
    telemetry, state, _ = setup
    _fill(telemetry, state)
    text, om = telemetry.scrape().body, _openmetrics(telemetry).encode()
    made = collections(telemetry)
    for _ in range(3):
        assert _collected(telemetry.scrape().body) == _collected(text)
        assert _collected(_openmetrics(telemetry).encode()) == _collected(om)
    assert not made, "unchanged state must not collect again"
    assert telemetry._prometheus is not None
    assert telemetry._prometheus.render(openmetrics=True) == _collected(om)
    assert telemetry._prometheus.render() == _collected(text)
    made.clear()  # the two direct renders above collected
    state.set_rows([Series("kvm", "only", "a", "node-1")])
    assert _collected(_openmetrics(telemetry).encode()) != _collected(om)
    assert len(made) == 1, "only the format asked for is collected"
    assert _collected(telemetry.scrape().body) != _collected(text)
    assert len(made) == 2


def test_the_sdks_own_metrics_are_never_served_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """With OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED the SDK counts every collection: each scrape is new."""
    env = {
        "OTEL_METRICS_EXPORTER": "prometheus",
        "NODE_NAME": "n",
        "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the SDK reads it from the environment itself
    telemetry = Telemetry(load_settings(env))

    def collections_counted() -> float:
        body = telemetry.scrape().body.decode()
        samples = parse_samples(body, "otel_sdk_metric_reader_collection_duration_seconds_count")
        return sum(value for _labels, value in samples)

    try:
        counted = [collections_counted() for _ in range(3)]
    finally:
        telemetry.shutdown(2)
    assert counted[0] < counted[1] < counted[2], counted
