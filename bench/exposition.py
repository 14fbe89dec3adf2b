"""/metrics and OTLP cost of the agent against baselines, in one process and one run.

A  the stock OpenTelemetry path: PrometheusMetricReader + prometheus_client exposition, and
   PeriodicExportingMetricReader + the OTLP encoder (an ordinary callback building observations)
B  a plain prometheus_client custom collector yielding a GaugeMetricFamily
C  the lower bound: joining pre-rendered exposition lines

The last /metrics table sends what Prometheus 3 sends by default (Accept OpenMetrics first,
Accept-Encoding: gzip) on a new connection per scrape; there B is served as prometheus_client
serves it (its make_wsgi_app: choose_encoder, gzip), behind the agent's server and behind
prometheus_client's own start_http_server.
"""

from __future__ import annotations

import gzip
import http.client
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider, ObservableGauge
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app, start_http_server
from prometheus_client.core import GaugeMetricFamily

from bench.common import interleaved_timings, median, ms, p99, table, timings
from otel_vmi_hv.config import load_settings
from otel_vmi_hv.export.exposition import TEXT_CONTENT_TYPE, Scrape
from otel_vmi_hv.export.telemetry import Telemetry
from otel_vmi_hv.export.vmi_instruments import INFO_HELP, INFO_METRIC
from otel_vmi_hv.interfaces import Snapshot
from otel_vmi_hv.model import Series
from otel_vmi_hv.server import HttpServer, Readiness
from tests.exposition import PROMETHEUS_3
from tests.telemetry_inputs import FixedInputs

LABELS = ("namespace", "name", "node", "hypervisor_type")
PROMETHEUS_3_HEADERS = {"Accept": PROMETHEUS_3, "Accept-Encoding": "gzip"}
PROMETHEUS_3_SIZES = (110, 250, 1_000)


def make_rows(n: int, flip: int = -1) -> tuple[Series, ...]:
    return tuple(
        Series(
            "qemu-tcg" if i == flip or i % 7 == 0 else "kvm", f"vm-{i:05d}", f"tenant-{i % 40}", "worker-1"
        )
        for i in range(n)
    )


class EncodeOnlyExporter(MetricExporter):
    """Encodes each export to OTLP protobuf bytes, as the OTLP exporters do before sending."""

    def __init__(self, encode: Callable[[MetricsData], Any] = encode_metrics) -> None:
        super().__init__()
        self.encode = encode
        self.bytes = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.bytes = len(self.encode(metrics_data).SerializeToString())
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


class StockOtel:
    """Baseline A: the SDK as documented, one MeterProvider, both stock readers."""

    def __init__(self, rows: tuple[Series, ...]) -> None:
        self.rows = rows
        self.registry = CollectorRegistry(auto_describe=False)
        # Cardinality limits raised so every series is exported, as the agent does; with the SDK's
        # default (2000) the baseline would fold 10,000 series into one overflow series.
        limits: dict[type, int] = {ObservableGauge: 10_000_000}
        self.otlp = PeriodicExportingMetricReader(
            EncodeOnlyExporter(), export_interval_millis=10**9, cardinality_limits=limits
        )
        self.provider = MeterProvider(
            metric_readers=[
                PrometheusMetricReader(
                    disable_target_info=True,
                    scope_info_enabled=False,
                    registry=self.registry,
                    cardinality_limits=limits,
                ),
                self.otlp,
            ],
            shutdown_on_exit=False,
        )
        self.provider.get_meter("baseline").create_observable_gauge(
            INFO_METRIC, callbacks=[self.observe], description=INFO_HELP
        )

    @staticmethod
    def observe_rows(rows: tuple[Series, ...]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """An ordinary callback: observations built from the rows at every collection."""

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(
                    1,
                    {
                        "namespace": r.namespace,
                        "name": r.name,
                        "node": r.node,
                        "hypervisor_type": r.hypervisor_type,
                    },
                )
                for r in rows
            ]

        return observe

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return self.observe_rows(self.rows)(options)

    def prometheus(self) -> bytes:
        body: bytes = generate_latest(self.registry)
        return body


class PlainCollector:
    """Baseline B: what a hand-written prometheus_client exporter would do."""

    def __init__(self, rows: tuple[Series, ...]) -> None:
        self.rows = rows
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(INFO_METRIC, INFO_HELP, labels=LABELS)
        for r in self.rows:
            family.add_metric((r.namespace, r.name, r.node, r.hypervisor_type), 1)
        yield family

    def render(self) -> bytes:
        body: bytes = generate_latest(self.registry)
        return body


class AgentSide:
    """The agent's Telemetry on a snapshot the benchmark controls, OTLP through an encoding exporter."""

    def __init__(self, rows: tuple[Series, ...], extra: Any = None) -> None:
        self.rows = rows
        self.encoder = EncodeOnlyExporter()
        self.otlp = PeriodicExportingMetricReader(self.encoder, export_interval_millis=10**9)
        settings = load_settings({"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_VMI_HV_NODE_NAME": "worker-1"})
        readers = [self.otlp] if extra is None else [extra]
        self.inputs = FixedInputs(Snapshot(1, rows, 0))
        self.telemetry = Telemetry(settings, extra_readers=readers)
        self.telemetry.register_vmi_instruments(self.inputs, self.inputs, self.inputs)
        self.variants = (rows, make_rows(len(rows), flip=1))

    def render(self) -> bytes:
        """The /metrics body in text format 0.0.4, uncompressed."""
        return self.telemetry.scrape().body

    def change(self) -> None:
        """One VMI changes type: a new snapshot, as the tracker publishes after a detection."""
        version = self.inputs.current.version + 1
        self.inputs.set(Snapshot(version, self.variants[version % 2], 0))

    def collect_after_change(self) -> None:
        """Only the MeterProvider collection the scrape makes (callbacks, aggregation), no text."""
        self.change()
        reader = self.telemetry._prometheus
        assert reader is not None
        reader.collect()

    def scrape_after_change(self) -> bytes:
        self.change()
        return self.telemetry.scrape().body


def _http_scrape(
    render: Callable[[], bytes],
    repeat: int,
    *,
    keep_alive: bool = True,
    cached: Callable[[str, str], Scrape | None] | None = None,
) -> list[float]:
    """Scrapes over loopback: on one kept-alive connection, or each on a new one (as Prometheus does
    when a scrape's connection was closed). No Accept or Accept-Encoding: text 0.0.4, uncompressed.
    ``cached`` is the agent's answer without a collection, given to the server as the agent does."""
    readiness = Readiness()
    server = HttpServer(
        "127.0.0.1",
        0,
        lambda _accept, _encoding: Scrape(render(), TEXT_CONTENT_TYPE, None),
        readiness,
        render_cached=cached,
    )
    server.start()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def scrape() -> None:
        nonlocal connection
        if not keep_alive:
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        response.read()
        assert response.status == 200

    try:
        return timings(scrape, repeat=repeat)
    finally:
        connection.close()
        server.stop()


def _wsgi_renderer(registry: CollectorRegistry) -> Callable[[str, str], Scrape]:
    """prometheus_client's own /metrics answer (make_wsgi_app: choose_encoder, then gzip when
    asked), called in process so that it can sit behind the agent's server."""
    app = make_wsgi_app(registry)

    def render(accept: str, accept_encoding: str) -> Scrape:
        answered: dict[str, str] = {}

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            answered.update(headers)

        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/metrics",
            "QUERY_STRING": "",
            "HTTP_ACCEPT": accept,
            "HTTP_ACCEPT_ENCODING": accept_encoding,
        }
        body = b"".join(app(environ, start_response))
        return Scrape(body, answered["Content-Type"], answered.get("Content-Encoding"))

    return render


@contextmanager
def agent_server(
    render: Callable[[str, str], Scrape], cached: Callable[[str, str], Scrape | None] | None = None
) -> Iterator[int]:
    server = HttpServer("127.0.0.1", 0, render, Readiness(), render_cached=cached)
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


@contextmanager
def prometheus_client_server(registry: CollectorRegistry) -> Iterator[int]:
    httpd, thread = start_http_server(0, "127.0.0.1", registry)
    try:
        yield httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


class _Prometheus3Scraper:
    """Scrapes one port with Prometheus 3's default headers, each on a new connection, checking the
    answer is gzipped OpenMetrics ending in # EOF; keeps the last body's size on the wire."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.last = b""

    def __call__(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", "/metrics", headers=PROMETHEUS_3_HEADERS)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("application/openmetrics-text")
        assert response.getheader("Content-Encoding") == "gzip"
        self.last = body


def _prometheus_3_rows(n: int, plain: PlainCollector, agent: AgentSide, repeat: int) -> list[list[object]]:
    """All four servers run at once and are scraped in turn, round after round, so that a burst of
    load from elsewhere on the machine falls on each of them alike. The changing agent is a second
    one, so that its changes never reach the unchanged one."""
    changing = AgentSide(agent.rows)

    def change_first(accept: str, accept_encoding: str) -> None:
        """The server asks the cache first: the change comes just before, so the cache misses."""
        changing.change()

    with ExitStack() as servers:
        servers.callback(changing.telemetry.shutdown, 2)
        scrapers = {
            "B prometheus_client, agent's server": servers.enter_context(
                agent_server(_wsgi_renderer(plain.registry))
            ),
            "B' prometheus_client's own server": servers.enter_context(
                prometheus_client_server(plain.registry)
            ),
            "agent, unchanged": servers.enter_context(
                agent_server(agent.telemetry.scrape, agent.telemetry.scrape_cached)
            ),
            "agent, after a change": servers.enter_context(
                agent_server(changing.telemetry.scrape, change_first)
            ),
        }
        scrape = {name: _Prometheus3Scraper(port) for name, port in scrapers.items()}
        results = interleaved_timings(scrape, repeat=repeat)
    for scraper in scrape.values():
        assert gzip.decompress(scraper.last).endswith(b"# EOF\n")
    b = median(results["B prometheus_client, agent's server"])
    b_own = median(results["B' prometheus_client's own server"])
    return [
        [
            n,
            name,
            ms(median(samples)),
            ms(p99(samples)),
            len(scrape[name].last),
            f"{median(samples) / b:.3f}",
            f"{median(samples) / b_own:.3f}",
        ]
        for name, samples in results.items()
    ]


def _otlp_send(rows: tuple[Series, ...], receiver: Any, repeat: int) -> list[list[object]]:
    """collect + encode + send over gRPC to a real receiver, stock exporter against the agent's."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    from otel_vmi_hv.export.otlp import ExportStatus, build_exporter

    endpoint = receiver.grpc_endpoint
    limits: dict[type, int] = {ObservableGauge: 10_000_000}
    stock_reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint, insecure=True),
        export_interval_millis=10**9,
        cardinality_limits=limits,
    )
    stock_provider = MeterProvider(metric_readers=[stock_reader], shutdown_on_exit=False)
    stock_provider.get_meter("baseline").create_observable_gauge(
        INFO_METRIC, callbacks=[StockOtel.observe_rows(rows)], description=INFO_HELP
    )
    # The agent's exporter reads its endpoint from the environment, as in the agent.
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    try:
        agent_reader = PeriodicExportingMetricReader(
            build_exporter("grpc", ExportStatus(endpoint)), export_interval_millis=10**9
        )
    finally:
        del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    agent = AgentSide(rows, extra=agent_reader)

    def agent_cycle() -> None:
        agent.change()
        agent_reader.collect()

    results = {
        "A stock OTel": timings(stock_reader.collect, repeat=repeat),
        "agent": timings(agent_cycle, repeat=repeat),
    }
    a = median(results["A stock OTel"])
    out: list[list[object]] = [
        [len(rows), name, ms(median(v)), ms(p99(v)), f"{median(v) / a:.3f}"] for name, v in results.items()
    ]
    stock_provider.shutdown()
    agent.telemetry.shutdown(2)
    return out


def run(sizes: tuple[int, ...] = (110, 250, 1_000, 10_000), receiver: Any = None) -> str:
    render_rows = []
    http_rows = []
    prometheus_3_rows: list[list[object]] = []
    otlp_rows = []
    send_rows: list[list[object]] = []
    for n in sizes:
        repeat = {110: 200, 250: 150, 1_000: 60, 10_000: 15}.get(n, 10)
        rows = make_rows(n)
        stock, plain, agent = StockOtel(rows), PlainCollector(rows), AgentSide(rows)
        lines = [
            f'{INFO_METRIC}{{hypervisor_type="{r.hypervisor_type}",name="{r.name}",namespace="{r.namespace}",'
            f'node="{r.node}"}} 1.0\n'.encode()
            for r in rows
        ]
        header = f"# HELP {INFO_METRIC} {INFO_HELP}\n# TYPE {INFO_METRIC} gauge\n".encode()

        def lower_bound(lines: list[bytes] = lines, header: bytes = header) -> bytes:
            return header + b"".join(lines)

        agent.render()
        results = {
            "A stock OTel": timings(stock.prometheus, repeat=repeat),
            "B prometheus_client": timings(plain.render, repeat=repeat),
            "C pre-rendered": timings(lower_bound, repeat=repeat),
            "agent, unchanged": timings(agent.render, repeat=repeat),
            "agent, after a change": timings(agent.scrape_after_change, repeat=repeat),
            "  of which the SDK collection": timings(agent.collect_after_change, repeat=repeat),
        }
        a, b, c = (median(results[k]) for k in ("A stock OTel", "B prometheus_client", "C pre-rendered"))
        for name, samples in results.items():
            m = median(samples)
            render_rows.append(
                [n, name, ms(m), ms(p99(samples)), f"{m / a:.3f}", f"{m / b:.3f}", f"{m / c:.1f}"]
            )

        http_results = {
            "A stock OTel": _http_scrape(stock.prometheus, repeat),
            "B prometheus_client": _http_scrape(plain.render, repeat),
            "agent, unchanged": _http_scrape(agent.render, repeat, cached=agent.telemetry.scrape_cached),
            "agent, after a change": _http_scrape(agent.scrape_after_change, repeat),
            "B, new connection per scrape": _http_scrape(plain.render, repeat, keep_alive=False),
            "agent, unchanged, new connection": _http_scrape(
                agent.render,
                repeat,
                keep_alive=False,
                cached=agent.telemetry.scrape_cached,
            ),
        }
        ha, hb = median(http_results["A stock OTel"]), median(http_results["B prometheus_client"])
        hb_new = median(http_results["B, new connection per scrape"])
        for name, samples in http_results.items():
            m = median(samples)
            b = hb_new if "new connection" in name else hb  # like for like
            http_rows.append([n, name, ms(m), ms(p99(samples)), f"{m / ha:.3f}", f"{m / b:.3f}"])
        if n in PROMETHEUS_3_SIZES:
            prometheus_3_rows.extend(_prometheus_3_rows(n, plain, agent, repeat))

        def agent_cycle(agent: AgentSide = agent) -> None:
            agent.change()
            agent.otlp.collect()

        otlp = {
            "A stock OTel": timings(stock.otlp.collect, repeat=repeat),
            "agent": timings(agent_cycle, repeat=repeat),
        }
        oa = median(otlp["A stock OTel"])
        for name, samples in otlp.items():
            m = median(samples)
            otlp_rows.append([n, name, ms(m), ms(p99(samples)), f"{m / oa:.3f}"])
        agent.telemetry.shutdown(2)
        stock.provider.shutdown()
        if receiver is not None:
            send_rows.extend(_otlp_send(rows, receiver, repeat))

    return "\n\n".join(
        [
            "/metrics render in process (ms)\n"
            + table(["N", "exporter", "median", "p99", "÷A", "÷B", "÷C"], render_rows),
            "/metrics scrape over HTTP on loopback, keep-alive unless said "
            "(ms; ÷B: against B on the same kind of connection)\n"
            + table(["N", "exporter", "median", "p99", "÷A", "÷B"], http_rows),
            "/metrics scrape with Prometheus 3's default request headers (Accept: OpenMetrics first, "
            "Accept-Encoding: gzip), a new connection per scrape (ms; bytes on the wire)\n"
            + table(["N", "exporter", "median", "p99", "bytes", "÷B", "÷B'"], prometheus_3_rows),
            "OTLP export cycle: collect + encode (ms)\n"
            + table(["N", "path", "median", "p99", "÷A"], otlp_rows),
            *(
                [
                    "OTLP export cycle: collect + encode + send over gRPC to rotel on loopback (ms)\n"
                    + table(["N", "path", "median", "p99", "÷A"], send_rows)
                ]
                if send_rows
                else []
            ),
        ]
    )


if __name__ == "__main__":
    import sys

    # `python -m bench.exposition 250 1000`: only these numbers of VMIs.
    print(run(tuple(int(n) for n in sys.argv[1:]) or (110, 250, 1_000, 10_000)))
