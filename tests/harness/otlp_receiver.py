"""A real OTLP receiver: the ``rotel`` PyPI package's ``rotel-agent``, turned into structured records.

Why rotel: it is a real OTLP/gRPC + OTLP/HTTP server (tonic/hyper, not a Python mock), installable
from PyPI with no network at test time, and with ``--debug-log metrics --debug-log-verbosity
detailed`` it prints every received data point to stdout. ``--exporter blackhole`` drops the data
afterwards. This module reads that stdout in a thread and parses it.

What rotel's detailed output looks like (one ``write(2)`` per received request, measured with
strace)::

    ResourceMetrics #0
    Resource attributes:
         -> service.name: Str(otel-vmi-hv)
    ScopeMetrics #0
    InstrumentationScope otel_vmi_hv 0.1.0
    Metric #0
    Descriptor:
         -> Name: kubevirt_vmi_hypervisor_info
         -> DataType: Gauge
    NumberDataPoints #0
    Data point attributes:
         -> hypervisor_type: Str(qemu-tcg)
    StartTimestamp: 0
    Timestamp: 1795680629797808222
    Value: 1

Fidelity of the parse (checked in test_harness.py with quotes, backslashes, newlines, tabs, CR,
non-ASCII, emoji, ``)`` and look-alike text inside values):

* Strings are printed raw, without escaping. Quotes, backslashes, tabs, CR, non-ASCII and text
  like ``Int(5)`` or ``x: y`` are recovered exactly (stdout is read as bytes and split on ``\\n``
  only, so a CR survives).
* A newline inside a value continues on the next line. It is recovered exactly unless the text
  before that newline ends with ``)`` AND the text after it looks like one of rotel's own lines
  (``     -> k: Str(...``, ``Value: 3``, ``Metric #1``...): such a value is indistinguishable from
  real structure, in rotel's output itself. The agent's values (hypervisor types, Kubernetes names
  and node names) cannot contain newlines, so the contract tests are unaffected.
* An attribute key containing ``: Str(`` (or another ``: <Type>(``) would be split at that point.
* Array values (``Slice(Str(a), Str(b))``) are split best-effort: an element string containing
  ``), Str(`` is ambiguous.
* ``Value:`` prints doubles without a trailing ``.0`` (1.0 prints as ``1``), so int and double points
  cannot be told apart: values are returned as ``float``.
* The ``complete`` flag of an ``Export`` is set when the pipe runs dry after a whole line, or when
  the next request starts. The pipe is enlarged to 1 MiB so a request's text (one write) arrives
  whole; a request larger than that (about 3,000 points) could be flagged complete a little early.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from tests.harness.ports import LOOPBACK, free_ports, wait_for_port

T = TypeVar("T")

AttrValue = str | int | float | bool | bytes | list["AttrValue"] | None

SETPRIV: Final = "/usr/bin/setpriv"
_F_SETPIPE_SZ: Final = 1031
_PIPE_SIZE: Final = 1 << 20
_MAX_RAW_LINES: Final = 200_000


def rotel_binary() -> str | None:
    """Path of ``rotel-agent`` inside the installed ``rotel`` package, None when not installed."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "rotel-agent"
    return str(path) if os.access(path, os.X_OK) else None


@dataclass(frozen=True)
class HistogramData:
    """The histogram part of a HistogramDataPoint as rotel printed it."""

    count: int
    sum: float | None
    min: float | None
    max: float | None
    bounds: list[float]
    bucket_counts: list[int]


@dataclass(frozen=True)
class Point:
    """One received data point with everything needed to assert on it."""

    metric: str
    data_type: str  # Gauge, Sum, Histogram, ...
    attributes: dict[str, AttrValue]
    value: float | None  # number points; None for histograms
    resource: dict[str, AttrValue]
    scope_name: str
    scope_version: str
    description: str
    unit: str
    start_time_unix_nano: int
    time_unix_nano: int
    export: int  # index of the Export (received request) this point came in
    histogram: HistogramData | None = None


@dataclass
class Export:
    """One received OTLP request (all its ResourceMetrics blocks), in arrival order."""

    index: int
    received_at: float  # time.monotonic() when its first line was read
    points: list[Point] = field(default_factory=list)
    resources: list[dict[str, AttrValue]] = field(default_factory=list)
    complete: bool = False

    def of(self, metric: str) -> list[Point]:
        """The points of ``metric`` in this export."""
        return [p for p in self.points if p.metric == metric]


# ------------------------------------------------------------------------------------------ parsing

_TYPES = "Str|Int|Double|Bool|Slice|Map|Bytes|Empty"
_ATTR_RE = re.compile(rf"^     -> (?P<key>.*?): (?P<raw>(?:{_TYPES})\(.*)$", re.DOTALL)
_FIELD_RE = re.compile(r"^     -> (?P<key>[A-Za-z]+): ?(?P<value>.*)$")
_POINTS_RE = re.compile(r"^(?P<kind>Number|Histogram|ExponentialHistogram|Summary)DataPoints #\d+$")
_LOG_RE = re.compile(r"^(?:\x1b\[[0-9;]*m)*\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
_STRUCTURE_RES = [
    re.compile(p)
    for p in (
        r"^ResourceMetrics #\d+$",
        r"^Resource SchemaURL: ",
        r"^Resource attributes:$",
        r"^ScopeMetrics #\d+$",
        r"^ScopeMetrics SchemaURL: ",
        r"^InstrumentationScope ",
        r"^Metric #\d+$",
        r"^Descriptor:$",
        r"^     -> ",
        r"^(?:Number|Histogram|ExponentialHistogram|Summary)DataPoints #\d+$",
        r"^Data point attributes:$",
        r"^(?:StartTimestamp|Timestamp|Count|Sum|Min|Max|Value|Flags|Scale|ZeroCount): ",
        r"^ExplicitBounds #\d+: ",
        r"^Buckets #\d+, Count: ",
        r"^Exemplars",
        r"^Exemplar #\d+",
    )
]


def _looks_structural(line: str) -> bool:
    return bool(_LOG_RE.match(line)) or any(r.match(line) for r in _STRUCTURE_RES)


def parse_typed_value(raw: str) -> AttrValue:
    """Turn rotel's ``Str(x)``, ``Int(5)``, ``Double(1.5)``, ``Bool(true)``, ``Slice(...)`` into Python."""
    match = re.match(rf"^({_TYPES})\((.*)\)$", raw, re.DOTALL)
    if match is None:
        return raw  # unknown shape: keep rotel's text rather than guess
    kind, inner = match.group(1), match.group(2)
    if kind == "Str":
        return inner
    if kind == "Int":
        return int(inner)
    if kind == "Double":
        return float(inner)
    if kind == "Bool":
        return inner == "true"
    if kind == "Slice":
        if not inner:
            return []
        parts = re.split(rf"(?<=\)), (?=(?:{_TYPES})\()", inner)
        return [parse_typed_value(p) for p in parts]
    if kind == "Empty":
        return None
    return inner  # Map / Bytes: rotel's text


def _num(text: str) -> float | None:
    text = text.strip()
    if not text or text == "None":
        return None
    try:
        return float(text)
    except ValueError:
        return None


class RotelOutputParser:
    """Incremental parser of rotel's detailed metrics debug output (fed one line at a time).

    Kept separate from the process so the parser can be tested on captured text.
    """

    def __init__(self, on_point: Callable[[Point], None], on_export: Callable[[Export], None]) -> None:
        """``on_point`` sees each finished point, ``on_export`` each new export (request)."""
        self._on_point = on_point
        self._on_export = on_export
        self.export_count = 0
        self.current: Export | None = None
        self.log_lines: list[str] = []
        self.unparsed: list[str] = []
        self._reset_resource()

    def _reset_resource(self) -> None:
        self._resource: dict[str, AttrValue] = {}
        self._scope_name = ""
        self._scope_version = ""
        self._reset_metric()

    def _reset_metric(self) -> None:
        self._descriptor: dict[str, str] = {}
        self._section = "none"  # resource_attrs | descriptor | point_attrs | point
        self._point: dict[str, object] | None = None
        self._open_attr: tuple[dict[str, AttrValue], str, str] | None = None  # target, key, raw

    # -- entry points
    def feed(self, line: str) -> None:
        """Consume one line (without its ``\\n``)."""
        if self._open_attr is not None:
            target, key, raw = self._open_attr
            if not raw.endswith(")") or not _looks_structural(line):
                self._open_attr = (target, key, raw + "\n" + line)
                return
            self._close_attr()
        if _LOG_RE.match(line):
            self.log_lines.append(line)
            return
        self._dispatch(line)

    def idle(self) -> None:
        """The input ran dry after a whole line: finish what is pending and mark the export done."""
        self._close_attr()
        self._finish_point()
        if self.current is not None:
            self.current.complete = True

    # -- structure
    def _dispatch(self, line: str) -> None:
        if line.startswith("ResourceMetrics #"):
            self._finish_point()
            if line == "ResourceMetrics #0":
                if self.current is not None:
                    self.current.complete = True
                self.current = Export(index=self.export_count, received_at=time.monotonic())
                self.export_count += 1
                self._on_export(self.current)
            self._reset_resource()
            if self.current is not None:
                self.current.resources.append(self._resource)
            return
        if line == "Resource attributes:":
            self._section = "resource_attrs"
            return
        if line.startswith("ScopeMetrics #"):
            self._finish_point()
            self._reset_metric()
            return
        if line.startswith("InstrumentationScope "):
            rest = line[len("InstrumentationScope ") :]
            name, _, version = rest.rpartition(" ") if " " in rest else (rest, "", "")
            self._scope_name, self._scope_version = name, version
            return
        if line.startswith("Metric #"):
            self._finish_point()
            self._reset_metric()
            return
        if line == "Descriptor:":
            self._section = "descriptor"
            return
        match = _POINTS_RE.match(line)
        if match:
            self._finish_point()
            self._point = {"kind": match.group("kind"), "attributes": {}, "bounds": [], "buckets": []}
            self._section = "point"
            return
        if line == "Data point attributes:":
            self._section = "point_attrs"
            return
        if line.startswith("     -> "):
            self._arrow_line(line)
            return
        if self._point is not None:
            self._point_line(line)
            return
        if not (line.startswith(("Resource SchemaURL:", "ScopeMetrics SchemaURL:")) or line == ""):
            self.unparsed.append(line)

    def _arrow_line(self, line: str) -> None:
        if self._section == "descriptor":
            match = _FIELD_RE.match(line)
            if match:
                self._descriptor[match.group("key")] = match.group("value")
            return
        match = _ATTR_RE.match(line)
        if match is None:
            self.unparsed.append(line)
            return
        if self._section == "resource_attrs":
            target = self._resource
        elif self._section == "point_attrs" and self._point is not None:
            attrs = self._point["attributes"]
            assert isinstance(attrs, dict)
            target = attrs
        else:
            self.unparsed.append(line)
            return
        self._open_attr = (target, match.group("key"), match.group("raw"))
        if self._open_attr[2].endswith(")") and not self._open_attr[2].startswith("Str("):
            self._close_attr()  # non-strings cannot continue on the next line

    def _close_attr(self) -> None:
        if self._open_attr is None:
            return
        target, key, raw = self._open_attr
        self._open_attr = None
        target[key] = parse_typed_value(raw)

    def _point_line(self, line: str) -> None:
        point = self._point
        assert point is not None
        key, _, value = line.partition(": ")
        if key in ("StartTimestamp", "Timestamp"):
            point[key] = int(value)
        elif key == "Value":
            point["value"] = _num(value)
            if point["kind"] == "Number":
                self._finish_point()
        elif key in ("Count", "Sum", "Min", "Max"):
            point[key] = _num(value)
        elif key.startswith("ExplicitBounds #"):
            bounds = point["bounds"]
            assert isinstance(bounds, list)
            bounds.append(_num(value))
        elif key.startswith("Buckets #"):
            buckets = point["buckets"]
            assert isinstance(buckets, list)
            buckets.append(int(line.rpartition("Count: ")[2]))
        # Flags, exemplars and anything newer: ignored on purpose.

    def _finish_point(self) -> None:
        self._close_attr()
        point, self._point = self._point, None
        if point is None or self.current is None:
            return
        attrs = point["attributes"]
        assert isinstance(attrs, dict)
        histogram = None
        if point["kind"] == "Histogram":
            bounds = point["bounds"]
            buckets = point["buckets"]
            assert isinstance(bounds, list) and isinstance(buckets, list)
            histogram = HistogramData(
                count=int(_as_float(point.get("Count")) or 0),
                sum=_as_float(point.get("Sum")),
                min=_as_float(point.get("Min")),
                max=_as_float(point.get("Max")),
                bounds=[float(b) for b in bounds],
                bucket_counts=[int(b) for b in buckets],
            )
        result = Point(
            metric=self._descriptor.get("Name", ""),
            data_type=self._descriptor.get("DataType", ""),
            attributes=dict(attrs),
            value=_as_float(point.get("value")),
            resource=dict(self._resource),
            scope_name=self._scope_name,
            scope_version=self._scope_version,
            description=self._descriptor.get("Description", ""),
            unit=self._descriptor.get("Unit", ""),
            start_time_unix_nano=int(_as_float(point.get("StartTimestamp")) or 0),
            time_unix_nano=int(_as_float(point.get("Timestamp")) or 0),
            export=self.current.index,
            histogram=histogram,
        )
        self._section = "point"
        self._on_point(result)


def _as_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


# ------------------------------------------------------------------------------------------ process


def _die_with_parent() -> list[str]:
    """Command prefix making the kernel SIGTERM the child when the test process dies (even by SIGKILL).

    ``setpriv --pdeathsig`` sets PR_SET_PDEATHSIG and execs, so no Python runs between fork and
    exec (``preexec_fn`` is unsafe once threads exist). The signal fires when the *thread* that
    spawned the child exits: start peers from a thread that lives as long as they should (pytest's
    main thread does). Without setpriv the prefix is empty and the finalizers are the only net.
    """
    return [SETPRIV, "--pdeathsig", "TERM", "--"] if os.access(SETPRIV, os.X_OK) else []


class RotelReceiver:
    """``rotel-agent`` listening on 127.0.0.1 (gRPC and HTTP), with its received points parsed.

    Usage::

        rx = RotelReceiver().start()
        exporter = OTLPMetricExporter(endpoint=rx.grpc_endpoint, insecure=True)   # gRPC
        exporter = OTLPMetricExporter(endpoint=rx.http_metrics_url)               # http/protobuf
        pts = rx.wait_for(lambda r: r.points("kubevirt_vmi_hypervisor_info"), timeout=10)
        rx.stop()
    """

    def __init__(self, binary: str | None = None, rust_log: str = "warn") -> None:
        """Prepare (not start). ``rust_log`` is rotel's log filter; its log lines are kept apart."""
        found = binary or rotel_binary()
        if found is None:
            raise FileNotFoundError("rotel-agent not found: pip install rotel (see pyproject dev extras)")
        self.binary: str = found
        self.rust_log = rust_log
        self.workdir = Path(tempfile.mkdtemp(prefix="ovh-rotel-", dir="/tmp"))
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None
        self._cond = threading.Condition()
        self._points: list[Point] = []
        self._exports: list[Export] = []
        self._raw: deque[str] = deque(maxlen=_MAX_RAW_LINES)
        self._parser = RotelOutputParser(self._add_point, self._add_export)
        self._reader: threading.Thread | None = None
        self._stderr_path = self.workdir / "stderr.log"

    # ------------------------------------------------------------------ endpoints
    @property
    def grpc_endpoint(self) -> str:
        """For the gRPC exporter: ``http://127.0.0.1:P`` (the http scheme means insecure)."""
        return f"http://{LOOPBACK}:{self._port(self.grpc_port)}"

    @property
    def http_endpoint(self) -> str:
        """Base URL for http/protobuf (``OTEL_EXPORTER_OTLP_ENDPOINT``; the SDK appends /v1/metrics)."""
        return f"http://{LOOPBACK}:{self._port(self.http_port)}"

    @property
    def http_metrics_url(self) -> str:
        """Full URL for ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` or the HTTP exporter's ``endpoint=``."""
        return f"{self.http_endpoint}/v1/metrics"

    @staticmethod
    def _port(port: int | None) -> int:
        if port is None:
            raise RuntimeError("rotel not started")
        return port

    # ------------------------------------------------------------------ lifecycle
    def start(
        self, timeout: float = 15.0, attempts: int = 3, ports: tuple[int, int] | None = None
    ) -> RotelReceiver:
        """Start rotel and return once both ports accept connections (retrying on port clashes).

        ``ports`` (grpc, http) pins the ports, e.g. to bring a receiver back where an exporter
        already points; otherwise free ones are picked.
        """
        last: Exception | None = None
        for _ in range(attempts):
            self.grpc_port, self.http_port = ports if ports is not None else free_ports(2)
            t0 = time.monotonic()
            self._spawn()
            proc = self.process
            assert proc is not None
            try:
                wait_for_port(self.grpc_port, timeout, proc)
                wait_for_port(self.http_port, timeout, proc)
            except (RuntimeError, TimeoutError) as exc:
                last = exc
                self._terminate()
                continue
            self.start_seconds = time.monotonic() - t0
            return self
        stderr = self._stderr_path.read_text(errors="replace")[-3000:] if self._stderr_path.exists() else ""
        raise RuntimeError(f"rotel-agent did not start: {last}; stderr:\n{stderr}")

    def _spawn(self) -> None:
        args = [
            *_die_with_parent(),
            self.binary, "start",
            "--otlp-grpc-endpoint", f"{LOOPBACK}:{self.grpc_port}",
            "--otlp-http-endpoint", f"{LOOPBACK}:{self.http_port}",
            "--debug-log", "metrics",
            "--debug-log-verbosity", "detailed",
            "--exporter", "blackhole",
            # Defaults are shared /tmp paths: two receivers (or two engineers) would clash.
            "--pid-file", str(self.workdir / "rotel.pid"),
            "--log-file", str(self.workdir / "rotel.log"),
        ]  # fmt: skip
        # A clean environment: inherited ROTEL_* variables would silently change the flags above.
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.workdir), "RUST_LOG": self.rust_log, "NO_COLOR": "1"}
        with open(self._stderr_path, "ab") as err:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        with contextlib.suppress(OSError):  # best effort; see the module docstring
            fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        self._reader = threading.Thread(target=self._read_loop, args=(fd,), name="rotel-stdout", daemon=True)
        self._reader.start()

    def _read_loop(self, fd: int) -> None:
        """Read rotel's stdout as bytes, split on ``\\n`` only, feed the parser, wake waiters."""
        pending = b""
        while True:
            try:
                chunk = os.read(fd, _PIPE_SIZE)
            except OSError:
                chunk = b""
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            with self._cond:
                for raw in lines:
                    line = raw.decode("utf-8", errors="surrogateescape")
                    self._raw.append(line)
                    try:
                        self._parser.feed(line)
                    except Exception as exc:  # keep reading: a dead reader would hang every wait
                        self._parser.unparsed.append(f"{line}  <- parser error: {exc!r}")
                if not pending and not select.select([fd], [], [], 0)[0]:
                    self._parser.idle()
                self._cond.notify_all()
        with self._cond:
            if pending:
                self._parser.feed(pending.decode("utf-8", errors="surrogateescape"))
            self._parser.idle()
            self._cond.notify_all()

    def _add_point(self, point: Point) -> None:
        self._points.append(point)
        if self._parser.current is not None:
            self._parser.current.points.append(point)

    def _add_export(self, export: Export) -> None:
        self._exports.append(export)

    def _terminate(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if proc.stdout is not None:
            proc.stdout.close()

    def stop(self) -> None:
        """SIGTERM rotel (SIGKILL after 5 s), finish parsing, remove its folder. Idempotent.

        Received records stay readable after ``stop()``.
        """
        self._terminate()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.workdir)

    def __enter__(self) -> RotelReceiver:
        """Start if not started; the block guarantees ``stop()``."""
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop whatever happened inside the block."""
        self.stop()

    # ------------------------------------------------------------------ reading
    def points(self, metric: str | None = None) -> list[Point]:
        """Every point received so far (of ``metric`` when given), oldest first."""
        with self._cond:
            return [p for p in self._points if metric is None or p.metric == metric]

    def exports(self, complete_only: bool = True) -> list[Export]:
        """Received requests, oldest first (by default only those fully read)."""
        with self._cond:
            return [e for e in self._exports if e.complete or not complete_only]

    def latest_export(self, metric: str | None = None) -> Export | None:
        """The newest complete export (containing ``metric`` when given), None if there is none."""
        for export in reversed(self.exports()):
            if metric is None or export.of(metric):
                return export
        return None

    def clear(self) -> None:
        """Forget everything received so far (export indexes keep increasing)."""
        with self._cond:
            self._points.clear()
            self._exports[:] = [e for e in self._exports if not e.complete]
            for export in self._exports:
                export.points.clear()

    @property
    def log_lines(self) -> list[str]:
        """rotel's own log lines (filtered by ``rust_log``), kept apart from the data."""
        with self._cond:
            return list(self._parser.log_lines)

    @property
    def unparsed_lines(self) -> list[str]:
        """Lines the parser did not understand (should stay empty; check it when debugging)."""
        with self._cond:
            return list(self._parser.unparsed)

    def raw_output(self, last: int | None = None) -> str:
        """rotel's stdout as read (last ``last`` lines), for failure messages."""
        with self._cond:
            lines: Sequence[str] = list(self._raw)
        if last is not None:
            lines = lines[-last:]
        return "\n".join(lines)

    def wait_for(self, predicate: Callable[[RotelReceiver], T], timeout: float = 10.0) -> T:
        """Block until ``predicate(self)`` is truthy and return its value, or raise ``TimeoutError``.

        The predicate is re-evaluated each time new output is parsed (a Condition, not a sleep).
        It runs with the receiver's lock held; the reading methods are reentrant-safe to call.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(self)
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"rotel predicate not satisfied within {timeout}s; "
                        f"{len(self._points)} points in {len(self._exports)} exports; "
                        f"last output:\n{self.raw_output(last=40)}"
                    )
                if self.process is None or self.process.poll() is not None:
                    # Stopped: no more data can arrive; one last evaluation already happened.
                    raise TimeoutError("rotel is not running; predicate not satisfied by what was received")
                self._cond.wait(remaining)

    def wait_for_export(
        self, predicate: Callable[[Export], bool], timeout: float = 10.0, after: int = -1
    ) -> Export:
        """Wait for a complete export with index > ``after`` satisfying ``predicate``; return it."""

        def check(rx: RotelReceiver) -> Export | None:
            for export in rx.exports():
                if export.index > after and predicate(export):
                    return export
            return None

        found = self.wait_for(check, timeout)
        assert found is not None  # wait_for returns only truthy results
        return found
