"""Parsing of the Prometheus text format, strict enough to catch escaping mistakes."""

from __future__ import annotations

import re

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
