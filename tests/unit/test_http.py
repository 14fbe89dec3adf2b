"""The HTTP endpoints as a client sees them: deadlines, limits, malformed requests, encodings."""

from __future__ import annotations

import gzip
import http.client
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from otel_vmi_hv.config import load_settings
from otel_vmi_hv.export.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Exposition, Scrape
from otel_vmi_hv.server import HttpServer, ListenError, Readiness, ServerLimits, limits_from
from tests.agent_process import exchange, wait_until

BODY = b"some_metric 1\n" * 1000  # above the gzip threshold


def plain(render: Callable[[], bytes]) -> Callable[[str, str], Scrape]:
    """A /metrics renderer answering ``render()`` as text, whatever the request asks for."""
    return lambda _accept, _accept_encoding: Scrape(render(), TEXT_CONTENT_TYPE, None)


@contextmanager
def serving(
    render: Callable[[], bytes] = lambda: BODY,
    readiness: Readiness | None = None,
    limits: ServerLimits = ServerLimits(),  # noqa: B008 - frozen
) -> Iterator[HttpServer]:
    server = HttpServer("127.0.0.1", 0, plain(render), readiness or Readiness(), limits=limits)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_limits_default_to_the_settings_and_follow_them() -> None:
    """ServerLimits() is what an unset environment gives (docs/configuration.md: test_docs.py)."""
    assert limits_from(load_settings({"NODE_NAME": "n"})) == ServerLimits()
    env = {"OTEL_VMI_HV_WEB_MAX_CONNECTIONS": "7", "OTEL_VMI_HV_WEB_MAX_REQUESTS": "3"}
    env |= {"OTEL_VMI_HV_WEB_READ_HEADER_TIMEOUT": "2s", "OTEL_VMI_HV_WEB_IDLE_TIMEOUT": "9s"}
    limits = limits_from(load_settings(env))
    assert (limits.max_connections, limits.max_requests) == (7, 3)
    assert (limits.read_header_timeout, limits.idle_timeout) == (2.0, 9.0)


def get(port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_a_client_that_never_finishes_its_headers_is_disconnected() -> None:
    with serving(limits=ServerLimits(read_header_timeout=0.3)) as server:
        clients = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(20)]
        for client in clients:
            client.sendall(b"GET /metrics HTTP/1.1\r\n")  # never finishes the request
        assert all(client.recv(1024) == b"" for client in clients), "the server must hang up"
        for client in clients:
            client.close()
        wait_until(lambda: server.connections == 0, 5, "connections to be released")


def test_a_silent_connection_is_dropped_but_a_finished_request_is_answered() -> None:
    with serving(limits=ServerLimits(read_header_timeout=0.3)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as silent:
            assert silent.recv(1) == b""
        assert get(server.port, "/healthz").status == 200


def test_connections_beyond_the_limit_get_503_and_the_rest_are_served() -> None:
    with serving(limits=ServerLimits(max_connections=3)) as server:
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
        wait_until(lambda: server.connections == 3, 5, "three connections to be accepted")
        refused = exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert b"Retry-After: 1\r\n" in refused and refused.endswith(b"too many connections\n")
        probe = exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert probe.startswith(b"HTTP/1.1 200 "), "probes are answered beyond the limit"
        assert b"Connection: close\r\n" in probe, "and the connection is not kept"
        for client in held:
            client.close()
        wait_until(lambda: server.connections == 0, 5, "connections to be released")
        assert get(server.port, "/healthz").status == 200


def test_probes_are_answered_while_scrapers_that_do_not_read_hold_every_connection() -> None:
    big = b"some_metric 1\n" * 75_000  # 1 MiB, eight times: more than the socket buffers hold
    with serving(lambda: big, limits=ServerLimits(max_connections=4)) as server:
        scrapers = [socket.socket() for _ in range(4)]
        try:
            for scraper in scrapers:
                scraper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                scraper.connect(("127.0.0.1", server.port))
                scraper.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 8)  # never read
            wait_until(lambda: server.connections == 4, 5, "the scrapers to hold every connection")
            for path in ["/healthz", "/readyz"] * 10:  # a probe waiting behind the scrapes never comes back
                answer = exchange(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), timeout=5)
                assert answer.startswith(b"HTTP/1.1 200 "), (path, answer[:100])
            refused = exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert refused.startswith(b"HTTP/1.1 503 "), "scrapes still find the limit"
        finally:
            for scraper in scrapers:
                scraper.close()


def test_scrapes_beyond_max_requests_get_503_while_healthz_still_answers() -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def slow_render() -> bytes:
        entered.release()
        release.wait(10)
        return BODY

    with serving(slow_render, limits=ServerLimits(max_requests=2)) as server:
        results: list[int] = []
        scrapers = [
            threading.Thread(target=lambda: results.append(get(server.port, "/metrics").status))
            for _ in range(2)
        ]
        for scraper in scrapers:
            scraper.start()
        assert entered.acquire(timeout=5) and entered.acquire(timeout=5), "both scrapes must be rendering"
        assert get(server.port, "/metrics").status == 503
        assert get(server.port, "/healthz").status == 200, "probes must not wait for rendering"
        release.set()
        for scraper in scrapers:
            scraper.join(10)
        assert results == [200, 200]


def test_metrics_vary_on_accept_and_accept_encoding_and_gzip_decodes_to_the_same_body() -> None:
    exposition = Exposition(lambda: 0, lambda _fmt: BODY, lambda _fmt: b"")
    server = HttpServer("127.0.0.1", 0, exposition.scrape, Readiness())
    server.start()
    try:
        client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        client.request("GET", "/metrics", headers={"Accept-Encoding": "gzip;q=0"})
        response = client.getresponse()
        assert response.getheader("Content-Encoding") is None
        assert response.getheader("Vary") == "Accept, Accept-Encoding"
        assert response.getheader("Content-Type") == TEXT_CONTENT_TYPE
        assert response.read() == BODY
        client.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        response = client.getresponse()
        assert response.getheader("Content-Encoding") == "gzip"
        assert gzip.decompress(response.read()) == BODY
        client.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text"})
        response = client.getresponse()
        assert response.getheader("Content-Type") == OPENMETRICS_CONTENT_TYPE
        assert response.getheader("Vary") == "Accept, Accept-Encoding"
        assert response.read() == BODY + b"# EOF\n"
        client.close()
    finally:
        server.stop()


def test_a_get_body_is_discarded_not_parsed_as_a_request() -> None:
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with serving() as server:
        answer = exchange(
            server.port,
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled)
            + b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert b"\r\n\r\nok\n" not in answer, "the body must not be answered as a /healthz request"
    assert answer.endswith(b"ready\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x00\x01garbage\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", b"400"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", b"505"),
        (b"GET / HTTP/3.7\r\nHost: x\r\n\r\n", b"505"),
    ],
)
def test_malformed_requests_get_a_status_line_and_a_client_error(request_bytes: bytes, status: bytes) -> None:
    with serving() as server:
        answer = exchange(server.port, request_bytes)
    first_line = answer.split(b"\r\n", 1)[0]
    assert first_line.startswith(b"HTTP/") and first_line.split()[1] == status, answer[:200]


def test_http_0_9_is_answered_at_once_not_left_hanging() -> None:
    with serving(limits=ServerLimits(read_header_timeout=30)) as server:
        answer = exchange(server.port, b"GET /\r\n\r\n", timeout=5)
    # No HTTP/0.9 (it has no headers, so no Host and no end of request): refused at once.
    assert answer.split(b"\r\n", 1)[0].split()[1] in (b"400", b"505")


def test_other_methods_are_refused_with_allow() -> None:
    with serving() as server:
        answer = exchange(server.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 1)
    assert answer.startswith(b"HTTP/1.1 405 ")
    assert b"Allow: GET, HEAD" in answer


def test_head_gets_headers_without_a_body() -> None:
    with serving() as server:
        answer = exchange(server.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == b""


def test_readiness_reports_what_is_missing() -> None:
    readiness = Readiness("initial VMI sync not done", "exporters not started")
    with serving(readiness=readiness) as server:
        response = get(server.port, "/readyz")
        assert response.status == 503
        readiness.done("initial VMI sync not done")
        readiness.done("exporters not started")
        assert get(server.port, "/readyz").status == 200


def test_a_taken_port_is_a_listen_error_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match=re.escape(f"127.0.0.1:{port}: the address is already in use")):
            HttpServer("127.0.0.1", port, plain(lambda: b""), Readiness())


def test_an_unresolvable_host_is_a_listen_error_naming_it() -> None:
    expected = re.escape("no-such-host.invalid:9464: the host cannot be resolved")
    with pytest.raises(ListenError, match=expected):
        HttpServer("no-such-host.invalid", 9464, plain(lambda: b""), Readiness())


def test_the_listen_backlog_absorbs_a_burst() -> None:
    with serving() as server:
        # Connect 200 times before the server gets to accept: the kernel queue must hold them all.
        clients = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(200)]
        for client in clients:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = [client.recv(1024) for client in clients]
        for client in clients:
            client.close()
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)


def test_thousands_of_pipelined_requests_are_answered_in_order() -> None:
    with serving() as server:
        requests = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 3000
        answer = exchange(
            server.port, requests + b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert answer.count(b"HTTP/1.1 200 OK") == 3001
    assert answer.endswith(b"ready\n")


def test_a_client_that_pipelines_without_reading_its_answers_is_cut_off() -> None:
    with (
        serving(limits=ServerLimits(idle_timeout=1)) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as client,
    ):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # 1,000 scrapes of 14 KB each, never read: the answers cannot all fit in socket buffers.
        client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 1000)
        wait_until(lambda: server.connections == 0, 10, "the server to drop the client")


def test_a_client_that_asks_to_close_and_never_reads_its_answer_is_cut_off() -> None:
    big = b"some_metric 1\n" * 600_000  # 8 MiB: more than the socket buffers on both sides hold
    with (
        serving(lambda: big, limits=ServerLimits(idle_timeout=1)) as server,
        socket.socket() as client,
    ):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", server.port))
        client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert client.recv(12) == b"HTTP/1.1 200", "the answer has started"
        assert server.connections == 1
        wait_until(lambda: server.connections == 0, 10, "the server to drop the client")


def test_metrics_pipelined_behind_a_render_are_answered() -> None:
    with serving() as server:
        requests = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 5
        answer = exchange(
            server.port, requests + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert answer.count(b"HTTP/1.1 200 OK") == 6
    assert answer.endswith(b"ok\n")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_slow_rendering_holds_up_neither_health_nor_readiness() -> None:
    entered = threading.Event()
    release = threading.Event()

    def render() -> bytes:
        entered.set()
        assert release.wait(10)
        return b"x 1\n"

    server = HttpServer("127.0.0.1", 0, plain(render), Readiness())
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with ThreadPoolExecutor(4) as pool:
            scrapes = [pool.submit(_get, f"{base}/metrics") for _ in range(4)]
            assert entered.wait(5), "no scrape reached the renderer"
            # The renderer is held until ``release``: a probe that waited for it would never be answered.
            assert _get(f"{base}/healthz")[0] == 200
            assert _get(f"{base}/readyz")[0] == 200
            assert not any(scrape.done() for scrape in scrapes), "scrapes cannot finish before the body"
            release.set()
            assert [scrape.result(timeout=5) for scrape in scrapes] == [(200, b"x 1\n")] * 4
    finally:
        release.set()
        server.stop()


def test_a_failing_rendering_answers_500_and_the_next_scrape_works() -> None:
    failures = [RuntimeError("boom")]

    def render() -> bytes:
        if failures:
            raise failures.pop()
        return b"x 1\n"

    server = HttpServer("127.0.0.1", 0, plain(render), Readiness())
    server.start()
    try:
        status, body = _get(f"http://127.0.0.1:{server.port}/metrics")
        assert status == 500 and b"boom" not in body, "an internal error is logged, not served"
        assert _get(f"http://127.0.0.1:{server.port}/metrics") == (200, b"x 1\n")
    finally:
        server.stop()


def test_metrics_answered_from_the_cache_skip_the_render_pool_and_fall_back_when_it_misses() -> None:
    rendered: list[str] = []
    hits = [Scrape(b"cached 1\n", TEXT_CONTENT_TYPE, None), None]

    def render(accept: str, accept_encoding: str) -> Scrape:
        rendered.append(threading.current_thread().name)
        return Scrape(b"rendered 1\n", TEXT_CONTENT_TYPE, None)

    def cached(accept: str, accept_encoding: str) -> Scrape | None:
        return hits.pop(0) if hits else None

    server = HttpServer("127.0.0.1", 0, render, Readiness(), render_cached=cached)
    server.start()
    try:
        assert _get(f"http://127.0.0.1:{server.port}/metrics") == (200, b"cached 1\n")
        assert _get(f"http://127.0.0.1:{server.port}/metrics") == (200, b"rendered 1\n")
        assert rendered and all(name.startswith("http-render") for name in rendered)
        assert len(rendered) == 1, "the cached answer did not go to the render pool"
    finally:
        server.stop()
