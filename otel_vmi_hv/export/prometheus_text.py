"""A MetricReader that renders the Prometheus text format (0.0.4) or OpenMetrics 1.0 straight from
MetricsData.

A plain SDK ``MetricReader`` on the agent's one MeterProvider: unlike the stock
``PrometheusMetricReader`` it can leave out the process metrics, which /metrics renders fresh per
scrape while the rest of the body is reused. The naming rules are the OpenTelemetry specification's
(the exporter's ``_mapping`` module is private), kept equal to the stock exporter's output by a
test. Series are sorted, so a body depends only on the collected state.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Collection, Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    MetricReader,
    MetricsData,
    Sum,
)

_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9:]+")
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9]+")
_UNIT_ANNOTATION = re.compile(r"{.*}")


def _table(pairs: str) -> dict[str, str]:
    return {key: value for key, _, value in (pair.partition("=") for pair in pairs.split())}


# UCUM units to the words Prometheus names end in; "1" (a ratio) adds nothing.
_UNIT_WORDS = _table(
    "d=days h=hours min=minutes s=seconds ms=milliseconds us=microseconds ns=nanoseconds By=bytes "
    "KiBy=kibibytes MiBy=mebibytes GiBy=gibibytes TiBy=tibibytes KBy=kilobytes MBy=megabytes "
    "GBy=gigabytes TBy=terabytes m=meters V=volts A=amperes J=joules W=watts g=grams Cel=celsius "
    "Hz=hertz 1= %=percent"
)
_PER_UNIT_WORDS = _table("s=second m=minute h=hour d=day w=week mo=month y=year")


def _leading_digit(text: str) -> str:
    return "_" + text[1:] if text and text[0].isdigit() else text


def label_name(key: str) -> str:
    """An attribute key as a Prometheus label name."""
    return _INVALID_LABEL_CHARS.sub("_", _leading_digit(key))


def _unit_suffix(unit: str) -> str:
    unit = _UNIT_ANNOTATION.sub("", unit)
    if unit in _UNIT_WORDS:
        return _UNIT_WORDS[unit]
    top, slash, bottom = unit.partition("/")
    if slash:
        bottom = _INVALID_NAME_CHARS.sub("_", bottom)
        if bottom:
            top = _INVALID_NAME_CHARS.sub("_", top)
            top = _UNIT_WORDS.get(top, top)
            bottom = _PER_UNIT_WORDS.get(bottom, bottom)
            return f"{top}_per_{bottom}" if top else f"per_{bottom}"
    return _INVALID_NAME_CHARS.sub("_", unit).strip("_")


def family_name(name: str, unit: str) -> str:
    """The exposed metric name: sanitized, with the unit's word appended unless already there."""
    sanitized = _INVALID_NAME_CHARS.sub("_", _leading_digit(name))
    suffix = _unit_suffix(unit or "")
    if suffix and not sanitized.endswith("_" + suffix):
        sanitized = f"{sanitized}_{suffix}"
    return sanitized


def _escape(text: str, quote: bool = True) -> str:
    # OpenMetrics escapes the double quote in HELP as well; text 0.0.4 would show the backslash.
    text = text.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r"\"") if quote else text


def number(value: float) -> str:
    """A sample value as Prometheus' Go clients write it (1.0, 2.5e+06, +Inf, NaN).

    prometheus_client's ``floatToGoString``, written here: importing that package for it would load
    the whole client (its exposition servers and collectors) into an agent that never uses them. A
    test compares the two on many values.
    """
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def labels_text(attributes: Mapping[str, Any], extra: str = "") -> str:
    parts = [
        f'{label_name(key)}="{_escape(_value_text(value))}"' for key, value in sorted(attributes.items())
    ]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def unit_word(name: str, unit: str) -> str:
    """The OpenMetrics UNIT of a family: the unit's word, when the name ends with it (OpenMetrics
    requires that); empty for annotations such as ``{vmi}`` and for ratios."""
    word = _unit_suffix(unit or "")
    return word if word and name.endswith("_" + word) else ""


def family_header(
    name: str, kind: str, description: str, unit: str = "", openmetrics: bool = False
) -> list[str]:
    """HELP and TYPE (and in OpenMetrics UNIT, when ``unit`` is given) of one family."""
    lines = [f"# HELP {name} {_escape(description, quote=openmetrics)}", f"# TYPE {name} {kind}"]
    if openmetrics and unit:
        lines.append(f"# UNIT {name} {unit}")
    return lines


def render(
    metrics_data: MetricsData | None, skip_scopes: Collection[str] = (), openmetrics: bool = False
) -> bytes:
    """Every metric in ``metrics_data`` outside ``skip_scopes``, in the Prometheus text format 0.0.4
    or, with ``openmetrics``, as OpenMetrics 1.0 families (without the final ``# EOF``: the caller
    appends more families first)."""
    if metrics_data is None:
        return b""
    out: list[str] = []
    for resource_metrics in metrics_data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name in skip_scopes:
                continue
            for metric in scope_metrics.metrics:
                out.extend(_family(metric, openmetrics))
    return ("\n".join(out) + "\n").encode() if out else b""


def _created(point: Any) -> str:
    """The OpenMetrics ``_created`` value: the SDK's start time of a cumulative point, in seconds."""
    return number(point.start_time_unix_nano / 1e9)


def _family(metric: Any, openmetrics: bool) -> list[str]:
    data = metric.data
    name = family_name(metric.name, metric.unit or "")
    description = metric.description or ""
    # Each point's labels are written once and the series sorted by them: a body depends only on
    # the collected state.
    points = sorted(((labels_text(p.attributes or {}), p) for p in data.data_points), key=lambda lp: lp[0])
    if (
        isinstance(data, Sum)
        and data.is_monotonic
        and data.aggregation_temporality is AggregationTemporality.CUMULATIVE
    ):
        return _counter(name.removesuffix("_total"), metric.unit or "", description, points, openmetrics)
    if isinstance(data, Gauge | Sum):
        unit = unit_word(name, metric.unit or "")
        return [
            *family_header(name, "gauge", description, unit, openmetrics),
            *(f"{name}{labels} {number(p.value)}" for labels, p in points),
        ]
    if isinstance(data, Histogram):
        return _histogram(name, metric.unit or "", description, points, openmetrics)
    return []  # exponential histograms: the agent creates none


def _counter(
    base: str, unit: str, description: str, points: list[tuple[str, Any]], openmetrics: bool
) -> list[str]:
    # Text 0.0.4 names the family after its samples; OpenMetrics adds each series' _created.
    family = base if openmetrics else f"{base}_total"
    lines = family_header(family, "counter", description, unit_word(base, unit), openmetrics)
    for labels, point in points:
        lines.append(f"{base}_total{labels} {number(point.value)}")
        if openmetrics:
            lines.append(f"{base}_created{labels} {_created(point)}")
    return lines


def _histogram(
    name: str, unit: str, description: str, points: list[tuple[str, Any]], openmetrics: bool
) -> list[str]:
    lines = family_header(name, "histogram", description, unit_word(name, unit), openmetrics)
    for labels, point in points:
        attributes = point.attributes or {}
        cumulative = 0
        bounds = [*(number(bound) for bound in point.explicit_bounds), "+Inf"]
        for bound, count in zip(bounds, point.bucket_counts, strict=False):
            cumulative += count
            le = 'le="' + bound + '"'
            lines.append(f"{name}_bucket{labels_text(attributes, le)} {number(cumulative)}")
        lines.append(f"{name}_count{labels} {number(point.count)}")
        lines.append(f"{name}_sum{labels} {number(point.sum)}")
        if openmetrics:
            lines.append(f"{name}_created{labels} {_created(point)}")
    return lines


class PrometheusTextReader(MetricReader):
    """Pull reader: each ``render()`` is one collection through the MeterProvider."""

    def __init__(self, skip_scopes: Collection[str] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._skip = frozenset(skip_scopes)
        self._received: MetricsData | None = None

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._received = metrics_data

    def render(self, openmetrics: bool = False) -> bytes:
        with self._lock:
            self._received = None
            self.collect()
            data, self._received = self._received, None
            return render(data, self._skip, openmetrics)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None
