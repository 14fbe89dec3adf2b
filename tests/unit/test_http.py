"""The HTTP endpoints: silent clients are dropped, parallel scrapes share one rendering."""

from __future__ import annotations

import socket
import threading
import time

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
        import urllib.error
        import urllib.request

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
