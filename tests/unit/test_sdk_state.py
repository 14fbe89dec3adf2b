"""The OpenTelemetry SDK keeps per-attribute-set state of async instruments forever; the agent's
pruner keeps it bounded without changing a single exported point."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_vmi_hv.config import load_settings
from otel_vmi_hv.export.process_metrics import read_process
from otel_vmi_hv.export.telemetry import Telemetry
from otel_vmi_hv.export.vmi_instruments import INFO_METRIC
from otel_vmi_hv.interfaces import Snapshot
from otel_vmi_hv.model import Series
from tests.exposition import info_series
from tests.telemetry_inputs import FixedInputs

RUNNING = 100
TOTAL = 100_000
WARM_ROUNDS = 100  # memory is compared from here on, once every cache has its size
GROWTH_LIMIT = 40_000_000  # bytes


def resident() -> float:
    """This process' resident memory, as the agent exports it."""
    return read_process()["process_resident_memory"]


def test_100k_distinct_vmis_churned_keep_sdk_state_bounded_and_output_exact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = FixedInputs()
    otlp_like = InMemoryMetricReader()
    telemetry = Telemetry(
        load_settings({"OTEL_METRICS_EXPORTER": "prometheus", "NODE_NAME": "n"}),
        extra_readers=[otlp_like],
    )
    telemetry.register_vmi_instruments(state, state, state)
    warnings = [r.getMessage() for r in caplog.records if r.name == "otel_vmi_hv.export.sdk_state"]
    assert not warnings, "the SDK's internals moved: sdk_state.py must be revisited"
    for round_, first in enumerate(range(0, TOTAL, RUNNING)):
        rows = tuple(Series("kvm", f"vm-{i}", "ns", "n") for i in range(first, first + RUNNING))
        state.set(Snapshot(round_ + 1, rows, 0))
        series = info_series(telemetry.scrape().body.decode())
        assert set(series) == {("ns", f"vm-{i}") for i in range(first, first + RUNNING)}
        if round_ % 10 == 0:  # the OTLP reader collects less often than Prometheus scrapes
            data = otlp_like.get_metrics_data()
            assert data is not None
            (metric,) = [
                m
                for sm in data.resource_metrics[0].scope_metrics
                for m in sm.metrics
                if m.name == INFO_METRIC
            ]
            names = {(p.attributes or {}).get("name") for p in metric.data.data_points}
            assert names == {f"vm-{i}" for i in range(first, first + RUNNING)}
        if round_ == WARM_ROUNDS:
            warm = resident()
    grown = resident() - warm
    # Bounded by the live series, not by the 100,000 ever seen: the SDK's state of every VMI ever
    # seen would take well over a hundred MB here (two readers hold state).
    assert grown < GROWTH_LIMIT, f"resident memory grew by {grown / 1e6:.1f} MB while {RUNNING} VMIs ran"
    assert "overflow" not in telemetry.scrape().body.decode()
    telemetry.shutdown(2)


def test_without_the_pruner_the_sdk_would_overflow() -> None:
    """Guards the reason the pruner exists: if a future SDK frees this state itself, this fails
    and the pruner (which reaches into SDK internals) can go."""
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics import MeterProvider

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    current: list[int] = [0]
    provider.get_meter("t").create_observable_gauge(
        "g",
        callbacks=[lambda _o: [Observation(1, {"n": str(i)}) for i in range(current[0], current[0] + 10)]],
    )
    for start in range(0, 2_100, 10):
        current[0] = start
        reader.get_metrics_data()
    data = reader.get_metrics_data()
    assert data is not None
    points = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    assert any((p.attributes or {}).get("otel.metric.overflow") for p in points)
    provider.shutdown()


def test_the_sdk_exports_only_attribute_sets_of_the_latest_callback() -> None:
    """The specification rule the pruner relies on: if a future SDK kept exporting attribute sets
    that are no longer observed, dropping its state between collections would change output."""
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics import MeterProvider

    fast, slow = InMemoryMetricReader(), InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[fast, slow], shutdown_on_exit=False)
    current: list[str] = ["a", "b"]
    provider.get_meter("t").create_observable_gauge(
        "g", callbacks=[lambda _o: [Observation(1, {"n": n}) for n in current]]
    )

    def names(reader: InMemoryMetricReader) -> set[str]:
        data = reader.get_metrics_data()
        assert data is not None
        points = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
        return {str((p.attributes or {})["n"]) for p in points}

    assert names(fast) == {"a", "b"}
    current[:] = ["b", "c"]
    assert names(fast) == {"b", "c"}
    current[:] = ["c"]
    assert names(slow) == {"c"}, "a reader that skipped collections still gets only the current sets"
    assert names(fast) == {"c"}
    provider.shutdown()
