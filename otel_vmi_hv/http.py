"""The HTTP endpoints on the Prometheus port: /metrics, /healthz, /readyz.

Each answer comes from state computed elsewhere (the rendered exposition, readiness flags), so
parallel probes and scrapes never trigger parallel work against libvirt or the API server.
"""

from __future__ import annotations

import gzip
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GZIP_MIN_BYTES = 4096
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0  # longer than any scrape interval's keep-alive gap Prometheus uses


class Readiness:
    """Why the agent is not ready yet; empty means ready. Only start-up sets reasons, so a
    transient disconnect later never flips /readyz (that is what self-metrics are for)."""

    def __init__(self, *reasons: str) -> None:
        self._pending = set(reasons)
        self._lock = threading.Lock()

    def done(self, reason: str) -> None:
        with self._lock:
            self._pending.discard(reason)

    def pending(self) -> list[str]:
        with self._lock:
            return sorted(self._pending)


def tls_context(cert_file: str, key_file: str, client_ca_file: str | None) -> ssl.SSLContext:
    """Server-side TLS (1.2+); with a client CA, a client certificate signed by it is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        context.load_verify_locations(cafile=client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    render_metrics: Callable[[], bytes]
    readiness: Readiness
    tls: ssl.SSLContext | None = None
    idle_timeout: float = IDLE_TIMEOUT
    _gzip_cache: tuple[bytes, bytes] = (b"", b"")

    def gzipped(self, body: bytes) -> bytes:
        """Compress ``body``, reusing the last result while the renderer hands out the same body."""
        plain, compressed = self._gzip_cache
        if plain is not body:
            compressed = gzip.compress(body, compresslevel=1)
            self._gzip_cache = (body, compressed)
        return compressed

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, on the connection's own thread, so a slow or hostile client
        # cannot stall the accept loop (wrapping the listening socket would handshake inside accept()).
        if self.tls is not None:
            request.settimeout(HANDSHAKE_TIMEOUT)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as error:
                log.debug("TLS handshake with %s failed: %s", client_address[0], error)
                request.close()
                return
            request.settimeout(self.idle_timeout)
        super().finish_request(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK of the headers: 40 ms added to every small response.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        # A client that connects and goes silent must not pin a thread forever.
        self.connection.settimeout(self.server.idle_timeout)

    server_version = "otel-vmi-hv"
    sys_version = ""  # no Python version in the Server header

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = self.server.render_metrics()
            except LookupError as missing:
                self._send(404, f"{missing}\n".encode())
                return
            except Exception:
                log.exception("rendering /metrics failed")
                self._send(500, b"rendering metrics failed; see the agent log\n")
                return
            self._send(200, body, METRICS_CONTENT_TYPE, allow_gzip=True)
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            pending = self.server.readiness.pending()
            if pending:
                self._send(503, ("not ready: " + ", ".join(pending) + "\n").encode())
            else:
                self._send(200, b"ready\n")
        elif path == "/":
            self._send(200, b"otel-vmi-hv: /metrics /healthz /readyz\n")
        else:
            self._send(404, b"not found; try /metrics, /healthz or /readyz\n")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        allow_gzip: bool = False,
    ) -> None:
        headers = {"Content-Type": content_type}
        if allow_gzip and len(body) >= GZIP_MIN_BYTES and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = self.server.gzipped(body)
            headers["Content-Encoding"] = "gzip"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s - " + format, self.address_string(), *args)


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        render_metrics: Callable[[], bytes],
        readiness: Readiness,
        *,
        tls: ssl.SSLContext | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), _Handler)
        self._server.render_metrics = render_metrics
        self._server.readiness = readiness
        self._server.tls = tls
        self._server.idle_timeout = idle_timeout
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
