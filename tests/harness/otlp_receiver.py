"""A real OTLP peer for the tests: ``rotel`` receives, and what it forwards is decoded exactly.

Why this shape: the agent must talk to a real OTLP server (``rotel-agent`` from the ``rotel`` PyPI
package: tonic/hyper, gRPC and HTTP/protobuf, no network needed at test time), and the tests must
see exactly what arrived. rotel is therefore started with its OTLP exporter pointed at a small
OTLP/HTTP server inside the test process (``ProtobufSink``), which parses each forwarded request
with ``opentelemetry-proto``'s own ``ExportMetricsServiceRequest``. No text is parsed anywhere:
every string, int, double, bool, array and bytes value comes back as the protobuf carried it.

What rotel is asked to do, and why:

* ``--disable-batching``: each request the agent sends is forwarded as one request, so an
  ``Export`` here is one collection of the agent (with batching, rotel merges requests that arrive
  within 200 ms, and the points of two collections would look like duplicates).
* ``--otlp-exporter-protocol http`` to ``http://127.0.0.1:<sink>``: rotel appends ``/v1/metrics``
  and sends ``application/x-protobuf``, gzip-compressed (rotel 0.0.1a15 compresses even when asked
  not to); the sink accepts gzip, deflate and identity.
* Clean environment and private pid/log files: inherited ``ROTEL_*`` variables would change the
  flags silently, and the default /tmp paths would clash between two receivers.

``RotelReceiver(forward=False)`` sends what rotel receives to its ``blackhole`` exporter instead,
for benchmarks that only need a real peer to send to and must not share the CPU with decoding.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from tests.agent_process import DeadlinePassed, wait_until
from tests.harness.ports import LOOPBACK, free_ports, wait_for_port

T = TypeVar("T")

AttrValue = str | int | float | bool | bytes | list["AttrValue"] | dict[str, "AttrValue"] | None

SETPRIV: Final = "/usr/bin/setpriv"
_MAX_BODY: Final = 64 << 20


def rotel_binary() -> str | None:
    """Path of ``rotel-agent`` inside the installed ``rotel`` package, None when not installed."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "rotel-agent"
    return str(path) if os.access(path, os.X_OK) else None


# ------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class HistogramData:
    """The histogram part of a HistogramDataPoint, as sent."""

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
    data_type: str  # Gauge, Sum, Histogram, ExponentialHistogram, Summary
    attributes: dict[str, AttrValue]
    value: int | float | None  # number points (int when sent as_int); None for histograms
    resource: dict[str, AttrValue]
    scope_name: str
    scope_version: str
    description: str
    unit: str
    start_time_unix_nano: int
    time_unix_nano: int
    export: int  # index of the Export (received request) this point came in
    histogram: HistogramData | None = None
    is_monotonic: bool | None = None  # Sum only
    temporality: int | None = None  # Sum and Histogram: AggregationTemporality (2 = cumulative)


@dataclass
class Export:
    """One received OTLP request (all its ResourceMetrics), in arrival order."""

    index: int
    received_at: float  # time.monotonic() when the sink had read it
    points: list[Point] = field(default_factory=list)
    resources: list[dict[str, AttrValue]] = field(default_factory=list)

    def of(self, metric: str) -> list[Point]:
        """The points of ``metric`` in this export."""
        return [p for p in self.points if p.metric == metric]


# ------------------------------------------------------------------------------------------ decoding


def any_value(value: AnyValue) -> AttrValue:
    """An OTLP ``AnyValue`` as the Python value it carries (unset: None)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    result: AttrValue = getattr(value, kind)
    return result


def attributes(pairs: Iterable[KeyValue]) -> dict[str, AttrValue]:
    """Key/value pairs as a dict; a key sent twice is an error, not a silent overwrite."""
    result: dict[str, AttrValue] = {}
    for pair in pairs:
        if pair.key in result:
            raise ValueError(f"attribute {pair.key!r} sent twice")
        result[pair.key] = any_value(pair.value)
    return result


def _optional(message: object, name: str) -> float | None:
    value: float = getattr(message, name)
    return value if message.HasField(name) else None  # type: ignore[attr-defined]


def _points_of(metric: Metric, common: dict[str, object]) -> list[Point]:
    kind = metric.WhichOneof("data")
    if kind is None:
        raise ValueError(f"metric {metric.name!r} carries no data")
    data = getattr(metric, kind)
    data_type = {
        "gauge": "Gauge",
        "sum": "Sum",
        "histogram": "Histogram",
        "exponential_histogram": "ExponentialHistogram",
        "summary": "Summary",
    }[kind]
    extra: dict[str, object] = {}
    if kind == "sum":
        extra = {"is_monotonic": data.is_monotonic, "temporality": data.aggregation_temporality}
    elif kind in ("histogram", "exponential_histogram"):
        extra = {"temporality": data.aggregation_temporality}
    points = []
    for dp in data.data_points:
        value: int | float | None = None
        histogram = None
        if kind in ("gauge", "sum"):
            which = dp.WhichOneof("value")
            value = None if which is None else getattr(dp, which)
        elif kind == "histogram":
            histogram = HistogramData(
                count=dp.count,
                sum=_optional(dp, "sum"),
                min=_optional(dp, "min"),
                max=_optional(dp, "max"),
                bounds=list(dp.explicit_bounds),
                bucket_counts=list(dp.bucket_counts),
            )
        points.append(
            Point(
                metric=metric.name,
                data_type=data_type,
                attributes=attributes(dp.attributes),
                value=value,
                description=metric.description,
                unit=metric.unit,
                start_time_unix_nano=dp.start_time_unix_nano,
                time_unix_nano=dp.time_unix_nano,
                histogram=histogram,
                **common,  # type: ignore[arg-type]
                **extra,  # type: ignore[arg-type]
            )
        )
    return points


def decode_export(body: bytes, index: int, received_at: float) -> Export:
    """One ``ExportMetricsServiceRequest`` (already decompressed) as an ``Export``.

    Raises ``google.protobuf.message.DecodeError`` or ``ValueError`` on anything malformed.
    """
    request = ExportMetricsServiceRequest.FromString(body)
    export = Export(index=index, received_at=received_at)
    for resource_metrics in request.resource_metrics:
        resource = attributes(resource_metrics.resource.attributes)
        export.resources.append(resource)
        for scope_metrics in resource_metrics.scope_metrics:
            common: dict[str, object] = {
                "resource": resource,
                "scope_name": scope_metrics.scope.name,
                "scope_version": scope_metrics.scope.version,
                "export": index,
            }
            for metric in scope_metrics.metrics:
                export.points.extend(_points_of(metric, common))
    return export


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


# ------------------------------------------------------------------------------------------ the sink


class ProtobufSink:
    """An OTLP/HTTP metrics server on 127.0.0.1 that decodes every request it gets.

    Answers 200 with an empty ``ExportMetricsServiceResponse`` to a request that decodes, 400 (and
    records the reason in ``errors``) to one that does not, so a test asserting ``errors == []``
    notices anything it could not read.
    """

    def __init__(self, on_export: Callable[[Export], None], on_error: Callable[[str], None]) -> None:
        """``on_export`` and ``on_error`` are called from the server's request threads."""
        self._on_export = on_export
        self._on_error = on_error
        self._count = 0
        self._count_lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                sink._handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_port)
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="otlp-sink", daemon=True
        )  # a short poll interval: stop() returns at once, as rotel's own stop does

    @property
    def endpoint(self) -> str:
        """Base URL for an OTLP/HTTP exporter (which appends ``/v1/metrics``)."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> ProtobufSink:
        """Serve in a thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(timeout=5)
        self.server.server_close()

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        status, reply = 200, ExportMetricsServiceResponse().SerializeToString()
        try:
            if request.path != "/v1/metrics":
                raise ValueError(f"POST to {request.path}, not /v1/metrics")
            length = int(request.headers.get("Content-Length", "0"))
            if not 0 <= length <= _MAX_BODY:
                raise ValueError(f"Content-Length {length}")
            body = request.rfile.read(length)
            content_type = request.headers.get("Content-Type", "")
            if content_type != "application/x-protobuf":
                raise ValueError(f"Content-Type {content_type!r}")
            raw = _decompress(body, request.headers.get("Content-Encoding", ""))
            with self._count_lock:
                index, self._count = self._count, self._count + 1
                export = decode_export(raw, index, time.monotonic())
                self._on_export(export)
        except Exception as exc:  # a bad request is recorded and refused; the server keeps going
            status, reply = 400, str(exc).encode()
            self._on_error(f"{type(exc).__name__}: {exc}")
        request.send_response(status)
        request.send_header("Content-Type", "application/x-protobuf" if status == 200 else "text/plain")
        request.send_header("Content-Length", str(len(reply)))
        request.end_headers()
        request.wfile.write(reply)


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
    """``rotel-agent`` listening on 127.0.0.1 (gRPC and HTTP), forwarding to a decoding sink.

    Usage::

        rx = RotelReceiver().start()
        exporter = OTLPMetricExporter(endpoint=rx.grpc_endpoint, insecure=True)   # gRPC
        exporter = OTLPMetricExporter(endpoint=rx.http_metrics_url)               # http/protobuf
        pts = rx.wait_for(lambda r: r.points("kubevirt_vmi_hypervisor_info"), timeout=10)
        rx.stop()
    """

    def __init__(self, binary: str | None = None, rust_log: str = "warn", *, forward: bool = True) -> None:
        """Prepare (not start). ``forward=False``: rotel drops what it receives (benchmarks)."""
        found = binary or rotel_binary()
        if found is None:
            raise FileNotFoundError("rotel-agent not found: pip install rotel (see pyproject dev extras)")
        self.binary: str = found
        self.rust_log = rust_log
        self.forward = forward
        self.workdir = Path(tempfile.mkdtemp(prefix="ovh-rotel-", dir="/tmp"))
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None
        self._cond = threading.Condition()
        self._exports: list[Export] = []
        self._errors: list[str] = []
        self._sink: ProtobufSink | None = None
        self._log_path = self.workdir / "rotel-output.log"

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
        """Start the sink and rotel; return once rotel's ports accept connections.

        ``ports`` (grpc, http) pins rotel's ports, e.g. to bring a receiver back where an exporter
        already points; otherwise free ones are picked (and retried on a clash).
        """
        if self.forward and self._sink is None:
            self._sink = ProtobufSink(self._add_export, self._add_error).start()
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
        raise RuntimeError(f"rotel-agent did not start: {last}; output:\n{self.raw_output(last=40)}")

    def _spawn(self) -> None:
        if self._sink is not None:
            exporter = [
                "--exporter", "otlp",
                "--otlp-exporter-endpoint", self._sink.endpoint,
                "--otlp-exporter-protocol", "http",
                "--disable-batching",
            ]  # fmt: skip
        else:
            exporter = ["--exporter", "blackhole"]
        args = [
            *_die_with_parent(),
            self.binary, "start",
            "--otlp-grpc-endpoint", f"{LOOPBACK}:{self.grpc_port}",
            "--otlp-http-endpoint", f"{LOOPBACK}:{self.http_port}",
            *exporter,
            "--pid-file", str(self.workdir / "rotel.pid"),
            "--log-file", str(self.workdir / "rotel.log"),
        ]  # fmt: skip
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.workdir), "RUST_LOG": self.rust_log, "NO_COLOR": "1"}
        with open(self._log_path, "ab") as log:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )

    def _add_export(self, export: Export) -> None:
        with self._cond:
            self._exports.append(export)
            self._cond.notify_all()

    def _add_error(self, error: str) -> None:
        with self._cond:
            self._errors.append(error)
            self._cond.notify_all()

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
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        """SIGTERM rotel (SIGKILL after 5 s), stop the sink, remove the folder. Idempotent.

        Received records stay readable after ``stop()``.
        """
        self._terminate()
        if self._sink is not None:
            self._sink.stop()
            self._sink = None
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
            return [p for e in self._exports for p in e.points if metric is None or p.metric == metric]

    def exports(self) -> list[Export]:
        """Received requests, oldest first."""
        with self._cond:
            return list(self._exports)

    def latest_export(self, metric: str | None = None) -> Export | None:
        """The newest export (containing ``metric`` when given), None if there is none."""
        for export in reversed(self.exports()):
            if metric is None or export.of(metric):
                return export
        return None

    def clear(self) -> None:
        """Forget everything received so far (export indexes keep increasing)."""
        with self._cond:
            self._exports.clear()

    @property
    def errors(self) -> list[str]:
        """Requests the sink could not decode (should stay empty)."""
        with self._cond:
            return list(self._errors)

    def raw_output(self, last: int | None = None) -> str:
        """rotel's own output (last ``last`` lines), for failure messages."""
        try:
            lines = self._log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-last:] if last is not None else lines)

    def wait_for(self, predicate: Callable[[RotelReceiver], T], timeout: float = 10.0) -> T:
        """Block until ``predicate(self)`` is truthy and return its value, or raise ``TimeoutError``.

        Re-evaluated each time a request arrives (a Condition, not a sleep); it runs with the
        receiver's lock held, which the reading methods take again safely (it is reentrant).
        """

        def check() -> T | None:
            with self._cond:
                result = predicate(self)
                if not result and (self.process is None or self.process.poll() is not None):
                    raise TimeoutError("rotel is not running; predicate not satisfied by what was received")
                return result

        try:
            return wait_until(check, timeout, "the predicate", interval=0.1, pause=self._await_request)
        except DeadlinePassed:
            with self._cond:
                raise TimeoutError(
                    f"predicate not satisfied within {timeout}s; {len(self._exports)} exports, "
                    f"errors {self._errors}; rotel output:\n{self.raw_output(last=20)}"
                ) from None

    def _await_request(self, seconds: float) -> None:
        """Return when the next request arrives, or after ``seconds``."""
        with self._cond:
            self._cond.wait(seconds)

    def wait_for_export(
        self, predicate: Callable[[Export], bool], timeout: float = 10.0, after: int = -1
    ) -> Export:
        """Wait for an export with index > ``after`` satisfying ``predicate``; return it."""

        def check(rx: RotelReceiver) -> Export | None:
            for export in rx.exports():
                if export.index > after and predicate(export):
                    return export
            return None

        found = self.wait_for(check, timeout)
        assert found is not None  # wait_for returns only truthy results
        return found
