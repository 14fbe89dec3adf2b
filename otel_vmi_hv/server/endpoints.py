"""The answers on the metrics port: /metrics, /healthz, /readyz, and the headers every response carries.

Each answer comes from state computed elsewhere (the rendered exposition, readiness flags), so
parallel probes and scrapes never trigger parallel work against libvirt or the API server. /metrics is
rendered in a small pool so a slow collection never delays a probe, unless the renderer has the answer
ready without collecting (an unchanged scrape); everything else is answered at once on the event loop.
How bytes reach the client is server/connection.py's business.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from typing import Any, Protocol

import h11

from otel_vmi_hv.export.exposition import Scrape
from otel_vmi_hv.server.limits import ServerLimits

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"
SERVER_HEADER = "otel-vmi-hv"
VARY = ("Vary", "Accept, Accept-Encoding")  # /metrics answers depend on both
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


class Endpoints:
    """Answers requests; owns the render pool and the Date header's cache. What /metrics says, in
    which format and encoding, is the renderer's (export/exposition.py): it gets the request's
    Accept and Accept-Encoding."""

    def __init__(
        self,
        render_metrics: Callable[[str, str], Scrape],
        readiness: Readiness,
        limits: ServerLimits,
        loop: asyncio.AbstractEventLoop,
        render_cached: Callable[[str, str], Scrape | None] | None = None,
    ) -> None:
        self.loop = loop
        self.limits = limits
        self._render_metrics = render_metrics
        self._render_cached = render_cached
        self._readiness = readiness
        self._pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="http-render")
        self._in_flight = 0
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
        accept, accept_encoding = (
            ",".join(value.decode("latin-1") for name, value in request.headers if name == wanted)
            for wanted in (b"accept", b"accept-encoding")
        )
        cached = self._answer_cached(accept, accept_encoding)
        if cached is not None:  # nothing to collect: answered here, without a thread hop
            connection.respond(200, cached.body, _scrape_headers(cached), head_only)
            return
        self._in_flight += 1
        rendering = self.loop.run_in_executor(self._pool, self._render, accept, accept_encoding)
        connection.start_rendering(rendering)

        def rendered(future: asyncio.Future[tuple[int, bytes, list[tuple[str, str]]]]) -> None:
            self._in_flight -= 1
            if future.cancelled():
                return
            status, body, headers = future.result()
            connection.respond(status, body, headers, head_only)
            connection.resume()

        rendering.add_done_callback(rendered)

    def _answer_cached(self, accept: str, accept_encoding: str) -> Scrape | None:
        if self._render_cached is None:
            return None
        try:
            return self._render_cached(accept, accept_encoding)
        except Exception:
            log.debug("answering /metrics from the cache failed; rendering it instead", exc_info=True)
            return None

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

    def _render(self, accept: str, accept_encoding: str) -> tuple[int, bytes, list[tuple[str, str]]]:
        """Runs in the render pool: the SDK collection and compression take milliseconds."""
        try:
            scrape = self._render_metrics(accept, accept_encoding)
        except LookupError as missing:
            return 404, f"{missing}\n".encode(), [*_text_headers(), VARY]
        except Exception:
            log.exception("rendering /metrics failed")
            return 500, b"rendering metrics failed; see the agent log\n", [*_text_headers(), VARY]
        return 200, scrape.body, _scrape_headers(scrape)


def _scrape_headers(scrape: Scrape) -> list[tuple[str, str]]:
    headers = [("Content-Type", scrape.content_type), VARY]
    if scrape.encoding:
        headers.append(("Content-Encoding", scrape.encoding))
    return headers


def _text_headers() -> list[tuple[str, str]]:
    return [("Content-Type", TEXT)]
