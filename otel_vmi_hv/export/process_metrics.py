"""The agent's own process metrics, under the names every Prometheus exporter uses.

An operator sizing the DaemonSet or chasing a leak needs the agent's memory, CPU, threads and open
files next to its other metrics; Prometheus client libraries publish these by themselves, the
OpenTelemetry SDK does not. Values come from /proc/self when read: as observable instruments (OTLP)
and, for /metrics, as text rendered at every scrape outside the cached body, from one table.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import threading
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from otel_vmi_hv.export.prometheus_text import family_header, family_name, number, unit_word

log = logging.getLogger(__name__)

Sample = dict[str, float]  # instrument name → value
# Instrument name (Prometheus adds the unit's word and _total): unit, counter, description.
PROCESS_METRICS = {
    "process_resident_memory": ("By", False, "Resident memory size in bytes."),
    "process_virtual_memory": ("By", False, "Virtual memory size in bytes."),
    "process_cpu": ("s", True, "Total user and system CPU time spent in seconds."),
    "process_open_fds": ("", False, "Number of open file descriptors."),
    "process_max_fds": ("", False, "Maximum number of open file descriptors."),
    "process_start_time": ("s", False, "Start time of the process since unix epoch in seconds."),
    "process_threads": ("", False, "Number of OS threads in the process."),
}


@functools.cache
def _boot_time(proc: str) -> float:
    """The boot time, read once: /proc/stat is long on big machines and btime never changes."""
    with open(f"{proc}/stat") as stat:
        return float(next(line.split()[1] for line in stat if line.startswith("btime ")))


def read_process(proc: str = "/proc", pid: str = "self") -> Sample:
    """One reading of /proc/<pid>/stat and /proc/<pid>/fd (man 5 proc)."""
    with open(f"{proc}/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    # fields[0] is field 3 (state) of the man page, so field n is fields[n - 3].
    return {
        "process_resident_memory": int(fields[21]) * os.sysconf("SC_PAGE_SIZE"),
        "process_virtual_memory": int(fields[20]),
        "process_cpu": (int(fields[11]) + int(fields[12])) / ticks,
        "process_open_fds": len(os.listdir(f"{proc}/{pid}/fd")),
        "process_max_fds": max_fds if max_fds != resource.RLIM_INFINITY else -1,
        "process_start_time": _boot_time(proc) + int(fields[19]) / ticks,
        "process_threads": int(fields[17]),
    }


def _read(read: Callable[[], Sample]) -> Sample:
    try:
        return read()
    except (OSError, ValueError, IndexError) as error:
        log.debug("cannot read process metrics: %s", error)
        return {}


def register_process_metrics(meter: Meter, read: Callable[[], Sample] = read_process) -> None:
    """The observable instruments (the OTLP path): one /proc reading per collection, shared by all
    seven callbacks (they run back to back; a name asked again starts a new reading)."""
    lock = threading.Lock()  # the Prometheus and OTLP readers may collect at once
    latest: Sample = {}
    served: set[str] = set()

    def observe(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            with lock:
                if not latest or name in served:
                    served.clear()
                    latest.clear()
                    latest.update(_read(read))
                served.add(name)
                return [Observation(latest[name])] if name in latest else []

        return callback

    for name, (unit, counter, description) in PROCESS_METRICS.items():
        create = meter.create_observable_counter if counter else meter.create_observable_gauge
        create(name, [observe(name)], unit=unit, description=description)


def _layout(name: str, openmetrics: bool) -> str:
    """One metric's HELP/TYPE(/UNIT) lines and sample name, which never change."""
    unit, counter, description = PROCESS_METRICS[name]
    base = family_name(name, unit).removesuffix("_total")
    sample = f"{base}_total" if counter else base
    family = base if openmetrics or not counter else sample
    kind = "counter" if counter else "gauge"
    return "\n".join([*family_header(family, kind, description, unit_word(base, unit), openmetrics), sample])


# Rendered once: a scrape only formats the values (naming costs more than reading /proc/self).
_LAYOUTS = {om: {name: _layout(name, om) for name in PROCESS_METRICS} for om in (False, True)}


def prometheus_text(read: Callable[[], Sample] = read_process, openmetrics: bool = False) -> bytes:
    """The same metrics in the Prometheus text format (or OpenMetrics families), read now. The CPU
    counter has no ``_created`` in OpenMetrics: like every Prometheus client's process collector,
    it is not an SDK point with a start time."""
    sample, layouts = _read(read), _LAYOUTS[openmetrics]
    return "".join(f"{layouts[n]} {number(sample[n])}\n" for n in PROCESS_METRICS if n in sample).encode()
