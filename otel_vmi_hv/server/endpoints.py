"""The answers on the metrics port: /metrics, /healthz, /readyz, and the headers every response carries.

Each answer comes from state computed elsewhere (the rendered exposition, readiness flags), so
parallel probes and scrapes never trigger parallel work against libvirt or the API server. /metrics is
rendered in a small pool so a slow collection never delays a probe; everything else is answered at
once on the event loop. How bytes reach the client is server/connection.py's business.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from typing import Any, Protocol

import h11

from otel_vmi_hv.server.limits import ServerLimits

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
SERVER_HEADER = "otel-vmi-hv"
GZIP_MIN_BYTES = 4096
RENDER_THREADS = 2
PROBE_PATHS = frozenset({b"/healthz", b"/readyz"})


class Responder(Protocol):
    """What an endpoint needs of the connection it answers on."""

    def respond(self, status: int, body: bytes, headers: list[tuple[str, str]], head_only: bool) -> None:
        """Send one complete response."""

    def start_rendering(self, rendering: asyncio.Future[Any]) -> None:
        """The answer comes later, when ``rendering`` is done; hold the requests that follow."""

    def resume(self) -> None:
        """After a later answer: go on with the requests that arrived meanwhile."""


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


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` allows gzip, honouring q-values (``gzip;q=0`` refuses it)."""
    gzip_q: float | None = None
    star_q: float | None = None
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if coding in ("gzip", "x-gzip"):
            gzip_q = q if gzip_q is None else max(gzip_q, q)
        elif coding == "*":
            star_q = q
    if gzip_q is not None:
        return gzip_q > 0
    return star_q is not None and star_q > 0


class Endpoints:
    """Answers requests; owns the render pool and the per-server caches (Date, gzip)."""

    def __init__(
        self,
        render_metrics: Callable[[], bytes],
        readiness: Readiness,
        limits: ServerLimits,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.loop = loop
        self.limits = limits
        self._render_metrics = render_metrics
        self._readiness = readiness
        self._pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="http-render")
        self._in_flight = 0
        self._gzip_cache: tuple[bytes, bytes] = (b"", b"")
        self._date = (0, "")

    def shutdown(self) -> None:
        """Drop scrapes still queued for the pool; one rendering right now finishes on its own."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def answer(self, connection: Responder, request: h11.Request) -> None:
        """Answer one request on ``connection``; /metrics is rendered in the pool, the rest at once."""
        head_only = request.method == b"HEAD"
        if request.http_version not in (b"1.0", b"1.1"):
            connection.respond(505, b"only HTTP/1.0 and HTTP/1.1 are served\n", _text_headers(), head_only)
            return
        if request.method not in (b"GET", b"HEAD"):
            body = b"only GET and HEAD are served\n"
            connection.respond(405, body, [*_text_headers(), ("Allow", "GET, HEAD")], head_only)
            return
        path = request.target.split(b"?", 1)[0]
        if path == b"/metrics":
            self._metrics(connection, request, head_only)
        elif path == b"/healthz":
            connection.respond(200, b"ok\n", _text_headers(), head_only)
        elif path == b"/readyz":
            pending = self._readiness.pending()
            if pending:
                body = ("not ready: " + ", ".join(pending) + "\n").encode()
                connection.respond(503, body, _text_headers(), head_only)
            else:
                connection.respond(200, b"ready\n", _text_headers(), head_only)
        elif path == b"/":
            connection.respond(200, b"otel-vmi-hv: /metrics /healthz /readyz\n", _text_headers(), head_only)
        else:
            body = b"not found; try /metrics, /healthz or /readyz\n"
            connection.respond(404, body, _text_headers(), head_only)

    def answer_beyond_cap(self, connection: Responder, request: h11.Request) -> None:
        """Answer a request on a connection beyond the connection cap: probes as usual (kubelet
        restarts an agent whose liveness probe fails), anything else 503 to come back later."""
        if request.target.split(b"?", 1)[0] in PROBE_PATHS:
            self.answer(connection, request)
            return
        body = b"too many connections\n"
        connection.respond(503, body, [*_text_headers(), ("Retry-After", "1")], request.method == b"HEAD")

    def _metrics(self, connection: Responder, request: h11.Request, head_only: bool) -> None:
        if self._in_flight >= self.limits.max_requests:
            body = f"too many concurrent scrapes (limit {self.limits.max_requests})\n".encode()
            connection.respond(503, body, [*_text_headers(), ("Retry-After", "1")], head_only)
            return
        accept_encoding = ",".join(
            value.decode("latin-1") for name, value in request.headers if name == b"accept-encoding"
        )
        self._in_flight += 1
        rendering = self.loop.run_in_executor(self._pool, self._render, accepts_gzip(accept_encoding))
        connection.start_rendering(rendering)

        def rendered(future: asyncio.Future[tuple[int, bytes, str | None]]) -> None:
            self._in_flight -= 1
            if future.cancelled():
                return
            status, body, encoding = future.result()
            headers = [("Vary", "Accept-Encoding")]
            if encoding:
                headers.append(("Content-Encoding", encoding))
            content_type = METRICS_CONTENT_TYPE if status == 200 else TEXT
            connection.respond(status, body, [("Content-Type", content_type), *headers], head_only)
            connection.resume()

        rendering.add_done_callback(rendered)

    def headers(self, headers: list[tuple[str, str]], body: bytes) -> list[tuple[str, str]]:
        """The headers every response carries, around ``headers``."""
        now = int(time.time())
        if now != self._date[0]:
            self._date = (now, formatdate(now, usegmt=True))
        return [
            *headers,
            ("Content-Length", str(len(body))),
            ("Server", SERVER_HEADER),
            ("Date", self._date[1]),
        ]

    def _render(self, want_gzip: bool) -> tuple[int, bytes, str | None]:
        """Runs in the render pool: the SDK collection and compression take milliseconds."""
        try:
            body = self._render_metrics()
        except LookupError as missing:
            return 404, f"{missing}\n".encode(), None
        except Exception:
            log.exception("rendering /metrics failed")
            return 500, b"rendering metrics failed; see the agent log\n", None
        if want_gzip and len(body) >= GZIP_MIN_BYTES:
            return 200, self._gzipped(body), "gzip"
        return 200, body, None

    def _gzipped(self, body: bytes) -> bytes:
        """Compress ``body``, reusing the last result while the renderer hands out the same body."""
        plain, compressed = self._gzip_cache
        if plain is not body:
            compressed = gzip.compress(body, compresslevel=1)
            self._gzip_cache = (body, compressed)
        return compressed


def _text_headers() -> list[tuple[str, str]]:
    return [("Content-Type", TEXT)]
