"""The caching OTLP encoder builds exactly the message the SDK's encoder builds, across churn."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_vmi_hv.config import load_settings
from otel_vmi_hv.model import Detection, DetectionMethod, Series
from otel_vmi_hv.otlp import CachingEncoder
from otel_vmi_hv.telemetry import INFO_METRIC, Telemetry
from otel_vmi_hv.tracker import Snapshot


def test_same_message_as_encode_metrics_while_series_come_and_go() -> None:
    state = {"snapshot": Snapshot(0, (), 0)}
    reader = InMemoryMetricReader()
    telemetry = Telemetry(
        load_settings({"OTEL_METRICS_EXPORTER": "none", "NODE_NAME": "n"}),
        lambda: state["snapshot"],
        extra_readers=[reader],
    )
    telemetry.self_metrics.record_detection(Detection("kvm", DetectionMethod.LIBVIRT), 0.01)
    encoder = CachingEncoder(INFO_METRIC)
    names = ["a", 'q"uote', "new\nline", "ü", "x" * 300]
    for round_ in range(6):
        rows = tuple(
            Series(
                "kvm" if (i + round_) % 3 else "qemu-tcg", f"{names[i % len(names)]}-{i + round_}", "ns", "n"
            )
            for i in range(40)
        )
        state["snapshot"] = Snapshot(round_ + 1, rows, 0)
        data = reader.get_metrics_data()
        assert data is not None
        assert encoder.encode(data) == encode_metrics(data)
    assert len(encoder._templates) == 40, "templates of series gone are dropped"
    telemetry.shutdown(2)


def test_without_the_info_metric_it_is_the_sdk_encoder() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(
        load_settings({"OTEL_METRICS_EXPORTER": "none", "NODE_NAME": "n"}),
        lambda: Snapshot(0, (), 0),
        extra_readers=[reader],
    )
    data = reader.get_metrics_data()
    assert data is not None
    assert CachingEncoder("no_such_metric").encode(data) == encode_metrics(data)
    telemetry.shutdown(2)
