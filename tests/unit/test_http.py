"""The HTTP endpoints: silent clients are dropped, a slow or failing rendering of /metrics holds up
nothing else, readiness says what is missing. (That parallel scrapes of an unchanged state share one
rendering is the renderer's promise, tested with the agent in tests/integration/test_scrape_sharing.py.)"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from otel_vmi_hv.http import HttpServer, Readiness


def test_a_silent_client_is_disconnected_after_the_idle_timeout() -> None:
    server = HttpServer("127.0.0.1", 0, lambda: b"", Readiness(), idle_timeout=0.3)
    server.start()
    try:
        before = threading.active_count()
        clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
        for client in clients:
            client.settimeout(5)
            client.sendall(b"GET /metrics HTTP/1.1\r\n")  # never finishes the request
        started = time.monotonic()
        assert all(client.recv(1024) == b"" for client in clients), "the server must hang up"
        assert time.monotonic() - started < 3
        deadline = time.monotonic() + 5
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert threading.active_count() <= before, "connection threads must end"
        for client in clients:
            client.close()
    finally:
        server.stop()


def test_readiness_reports_what_is_missing() -> None:
    readiness = Readiness("initial VMI sync not done", "exporters not started")
    server = HttpServer("127.0.0.1", 0, lambda: b"x 1\n", readiness)
    server.start()
    try:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=5)
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as error:
            assert error.code == 503
            assert b"initial VMI sync not done" in error.read()
        readiness.done("initial VMI sync not done")
        readiness.done("exporters not started")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=5) as response:
            assert response.status == 200
    finally:
        server.stop()


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

    server = HttpServer("127.0.0.1", 0, render, Readiness())
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with ThreadPoolExecutor(4) as pool:
            scrapes = [pool.submit(_get, f"{base}/metrics") for _ in range(4)]
            assert entered.wait(5), "no scrape reached the renderer"
            started = time.monotonic()
            assert _get(f"{base}/healthz")[0] == 200
            assert _get(f"{base}/readyz")[0] == 200
            assert time.monotonic() - started < 1
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

    server = HttpServer("127.0.0.1", 0, render, Readiness())
    server.start()
    try:
        status, body = _get(f"http://127.0.0.1:{server.port}/metrics")
        assert status == 500 and b"boom" not in body, "an internal error is logged, not served"
        assert _get(f"http://127.0.0.1:{server.port}/metrics") == (200, b"x 1\n")
    finally:
        server.stop()
