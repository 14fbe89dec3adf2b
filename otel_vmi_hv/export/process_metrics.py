"""The agent's own process metrics, under the names every Prometheus exporter uses.

An operator sizing the DaemonSet or chasing a leak needs the agent's memory, CPU, threads and open
files next to its other metrics; a Prometheus client library would publish these by itself, the
OpenTelemetry SDK does not. Values come from /proc/self at each collection (observable
instruments), so they cost nothing between scrapes and reach both /metrics and OTLP.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from otel_vmi_hv.export.prometheus_text import family_header, family_name, number, unit_word

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProcessSample:
    resident_bytes: int
    virtual_bytes: int
    cpu_seconds: float
    threads: int
    start_time_seconds: float
    open_fds: int
    max_fds: int


@functools.cache
def _boot_time(proc: str) -> float:
    """The boot time, read once: /proc/stat is long on big machines and btime never changes."""
    with open(f"{proc}/stat") as stat:
        return float(next(line.split()[1] for line in stat if line.startswith("btime ")))


def read_process(proc: str = "/proc", pid: str = "self") -> ProcessSample:
    """One reading of /proc/<pid>/stat and /proc/<pid>/fd (man 5 proc)."""
    with open(f"{proc}/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # fields[0] is field 3 (state) of the man page, so field n is fields[n - 3].
    utime, stime = int(fields[11]), int(fields[12])
    threads, start_ticks = int(fields[17]), int(fields[19])
    virtual, resident_pages = int(fields[20]), int(fields[21])
    open_fds = len(os.listdir(f"{proc}/{pid}/fd"))
    max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return ProcessSample(
        resident_bytes=resident_pages * os.sysconf("SC_PAGE_SIZE"),
        virtual_bytes=virtual,
        cpu_seconds=(utime + stime) / ticks,
        threads=threads,
        start_time_seconds=_boot_time(proc) + start_ticks / ticks,
        open_fds=open_fds,
        max_fds=max_fds if max_fds != resource.RLIM_INFINITY else -1,
    )


class _Latest:
    """One /proc reading per collection, shared by all seven callbacks (they run back to back)."""

    def __init__(self, read: Callable[[], ProcessSample]) -> None:
        self._read = read
        self._sample: ProcessSample | None = None
        self._served: set[str] = set()
        self._lock = threading.Lock()  # the Prometheus and OTLP readers may collect at once

    def get(self, name: str) -> ProcessSample | None:
        with self._lock:
            return self._get(name)

    def _get(self, name: str) -> ProcessSample | None:
        if self._sample is None or name in self._served:
            try:
                self._sample = self._read()
            except (OSError, ValueError, IndexError) as error:
                log.debug("cannot read process metrics: %s", error)
                self._sample = None
            self._served = set()
        self._served.add(name)
        return self._sample


@dataclass(frozen=True, slots=True)
class _Metric:
    name: str  # the OpenTelemetry instrument name; Prometheus adds the unit's word and _total
    unit: str
    counter: bool
    description: str
    value: Callable[[ProcessSample], float]


PROCESS_METRICS = (
    _Metric(
        "process_resident_memory", "By", False, "Resident memory size in bytes.", lambda s: s.resident_bytes
    ),
    _Metric(
        "process_virtual_memory", "By", False, "Virtual memory size in bytes.", lambda s: s.virtual_bytes
    ),
    _Metric(
        "process_cpu", "s", True, "Total user and system CPU time spent in seconds.", lambda s: s.cpu_seconds
    ),
    _Metric("process_open_fds", "", False, "Number of open file descriptors.", lambda s: s.open_fds),
    _Metric("process_max_fds", "", False, "Maximum number of open file descriptors.", lambda s: s.max_fds),
    _Metric(
        "process_start_time",
        "s",
        False,
        "Start time of the process since unix epoch in seconds.",
        lambda s: s.start_time_seconds,
    ),
    _Metric("process_threads", "", False, "Number of OS threads in the process.", lambda s: s.threads),
)


def register_process_metrics(meter: Meter, read: Callable[[], ProcessSample] = read_process) -> None:
    """Create the observable instruments (the OTLP path); exposed as process_resident_memory_bytes,
    process_virtual_memory_bytes, process_cpu_seconds_total, process_open_fds, process_max_fds,
    process_start_time_seconds and process_threads."""
    latest = _Latest(read)

    def observe(metric: _Metric) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            sample = latest.get(metric.name)
            return [] if sample is None else [Observation(metric.value(sample))]

        return callback

    for metric in PROCESS_METRICS:
        create = meter.create_observable_counter if metric.counter else meter.create_observable_gauge
        create(metric.name, [observe(metric)], unit=metric.unit, description=metric.description)


def _layout(metric: _Metric, openmetrics: bool) -> tuple[str, str]:
    """One metric's HELP/TYPE(/UNIT) lines and sample name, which never change."""
    name = family_name(metric.name, metric.unit)
    if metric.counter:
        base = name.removesuffix("_total")
        family = base if openmetrics else base + "_total"
        header = family_header(
            family, "counter", metric.description, unit_word(base, metric.unit), openmetrics
        )
        return "\n".join(header) + "\n", base + "_total"
    header = family_header(name, "gauge", metric.description, unit_word(name, metric.unit), openmetrics)
    return "\n".join(header) + "\n", name


# Rendered once: a scrape only formats the values (naming costs more than reading /proc/self).
_LAYOUTS = {openmetrics: [_layout(m, openmetrics) for m in PROCESS_METRICS] for openmetrics in (False, True)}


def prometheus_text(read: Callable[[], ProcessSample] = read_process, openmetrics: bool = False) -> bytes:
    """The same metrics in the Prometheus text format (or OpenMetrics families), read now.

    /metrics serves its body from a cache while the VMIs do not change; these values change at
    every scrape, so they are rendered apart from it, from the same table as the instruments. The
    CPU counter has no ``_created`` in OpenMetrics: like every Prometheus client's process
    collector, it is not an SDK point with a start time.
    """
    try:
        sample = read()
    except (OSError, ValueError, IndexError) as error:
        log.debug("cannot read process metrics: %s", error)
        return b""
    return "".join(
        f"{header}{sample_name} {number(metric.value(sample))}\n"
        for metric, (header, sample_name) in zip(PROCESS_METRICS, _LAYOUTS[openmetrics], strict=True)
    ).encode()
