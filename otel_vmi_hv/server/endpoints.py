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
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Protocol

import h11

from otel_vmi_hv.config import Settings, default_value
from otel_vmi_hv.config.options import PROBE_HEAD_TIMEOUT, PROBE_SLOTS
from otel_vmi_hv.export.exposition import Scrape

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"
SERVER = ("Server", "otel-vmi-hv")
VARY = ("Vary", "Accept, Accept-Encoding")  # /metrics answers depend on both
RENDER_THREADS = 2
PROBE_PATHS = frozenset({b"/healthz", b"/readyz"})
Headers = tuple[tuple[str, str], ...]
TEXT_HEADERS: Headers = (("Content-Type", TEXT),)
TOO_MANY: Headers = (*TEXT_HEADERS, ("Retry-After", "1"))
STATIC_ANSWERS = {
    b"/healthz": (200, b"ok\n"),
    b"/readyz": (200, b"ready\n"),
    b"/": (200, b"otel-vmi-hv: /metrics /healthz /readyz\n"),
}


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What clients may hold on the metrics port, for the listener, connections and endpoints alike.
    The configurable limits default to the option table's; the probe slots are not options."""

    max_connections: int = default_value("web_max_connections")
    max_requests: int = default_value("web_max_requests")  # concurrent /metrics requests
    read_header_timeout: float = default_value("web_read_header_timeout")
    idle_timeout: float = default_value("web_idle_timeout")
    # Liveness must not fail because others hold every connection (config/options.py).
    probe_slots: int = PROBE_SLOTS
    probe_head_timeout: float = PROBE_HEAD_TIMEOUT

    def head_timeout(self, beyond_cap: bool) -> float:
        """How long the request head (and the TLS handshake) may take to arrive."""
        return (
            min(self.probe_head_timeout, self.read_header_timeout) if beyond_cap else self.read_header_timeout
        )


def limits_from(settings: Settings) -> ServerLimits:
    """Each configurable limit from its setting, ``web_<limit>``."""
    configured = ("max_connections", "max_requests", "read_header_timeout", "idle_timeout")
    return ServerLimits(**{name: getattr(settings, f"web_{name}") for name in configured})


class Responder(Protocol):
    """What an endpoint needs of the connection it answers on (server/connection.py)."""

    def respond(self, status: int, body: bytes, headers: Headers, head_only: bool) -> None:
        """Send one complete response; after one rendered later, go on with the requests after it."""

    def start_rendering(self, rendering: asyncio.Future[Any]) -> None:
        """The answer comes later, when ``rendering`` is done; hold the requests that follow."""


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


LINES_PER_SECOND = 5


class RateLimitedLog:
    """Debug lines about clients, at most ``per_second`` a second; the rest are counted and the
    count is reported with the next line that gets through."""

    def __init__(self, logger: logging.Logger, per_second: int = LINES_PER_SECOND) -> None:
        self._logger, self._per_second = logger, per_second
        self._window, self._used, self._dropped = 0.0, 0, 0  # this second's start, lines, lines dropped
        self._lock = threading.Lock()

    def debug(self, message: str, *args: object) -> None:
        if not self._logger.isEnabledFor(logging.DEBUG):
            return
        now = time.monotonic()
        with self._lock:
            if now - self._window >= 1.0:
                self._window, self._used = now, 0
            if self._used >= self._per_second:
                self._dropped += 1
                return
            self._used += 1
            dropped, self._dropped = self._dropped, 0
        suffix = f" ({dropped} similar lines dropped)" if dropped else ""
        self._logger.debug(message + suffix, *args)


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
        self._render_cached = render_cached or (lambda _accept, _encoding: None)
        self._readiness = readiness
        # Clients' misbehaviour costs at most a few debug lines a second, per server.
        self.client_noise = RateLimitedLog(logging.getLogger("otel_vmi_hv.server.client"))
        self._pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="http-render")
        self._in_flight = 0
        self._date = (0, "")

    def shutdown(self) -> None:
        """Drop scrapes still queued for the pool; one rendering right now finishes on its own."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def answer(self, connection: Responder, request: h11.Request, beyond_cap: bool = False) -> None:
        """Answer one request on ``connection``; /metrics is rendered in the pool, the rest at once.
        Beyond the connection cap only probes are answered (kubelet restarts an agent whose liveness
        probe fails), anything else gets 503 to come back later."""
        head_only = request.method == b"HEAD"
        path = request.target.split(b"?", 1)[0]
        headers: Headers = TEXT_HEADERS
        if beyond_cap and path not in PROBE_PATHS:
            status, body, headers = 503, b"too many connections\n", TOO_MANY
        elif request.http_version not in (b"1.0", b"1.1"):
            status, body = 505, b"only HTTP/1.0 and HTTP/1.1 are served\n"
        elif request.method not in (b"GET", b"HEAD"):
            status, body = 405, b"only GET and HEAD are served\n"
            headers = (*TEXT_HEADERS, ("Allow", "GET, HEAD"))
        elif path == b"/metrics":
            self._metrics(connection, request, head_only)
            return
        elif path == b"/readyz" and (pending := self._readiness.pending()):
            status, body = 503, ("not ready: " + ", ".join(pending) + "\n").encode()
        else:
            status, body = STATIC_ANSWERS.get(path, (404, b"not found; try /metrics, /healthz or /readyz\n"))
        connection.respond(status, body, headers, head_only)

    def _metrics(self, connection: Responder, request: h11.Request, head_only: bool) -> None:
        if self._in_flight >= self.limits.max_requests:
            body = f"too many concurrent scrapes (limit {self.limits.max_requests})\n".encode()
            connection.respond(503, body, TOO_MANY, head_only)
            return
        accept, accept_encoding = (
            ",".join(value.decode("latin-1") for name, value in request.headers if name == wanted)
            for wanted in (b"accept", b"accept-encoding")
        )
        try:
            cached = self._render_cached(accept, accept_encoding)
        except Exception:
            log.debug("answering /metrics from the cache failed; rendering it instead", exc_info=True)
            cached = None
        if cached is not None:  # nothing to collect: answered here, without a thread hop
            connection.respond(200, cached.body, _scrape_headers(cached), head_only)
            return
        self._in_flight += 1
        rendering = self.loop.run_in_executor(self._pool, self._render, accept, accept_encoding)
        connection.start_rendering(rendering)

        def rendered(future: asyncio.Future[tuple[int, bytes, Headers]]) -> None:
            self._in_flight -= 1
            if future.cancelled():
                return
            status, body, headers = future.result()
            connection.respond(status, body, headers, head_only)

        rendering.add_done_callback(rendered)

    def headers(self, headers: Headers, body: bytes) -> Headers:
        """The headers every response carries, around ``headers``."""
        if (now := int(time.time())) != self._date[0]:
            self._date = (now, formatdate(now, usegmt=True))
        return (*headers, ("Content-Length", str(len(body))), SERVER, ("Date", self._date[1]))

    def _render(self, accept: str, accept_encoding: str) -> tuple[int, bytes, Headers]:
        """Runs in the render pool: the SDK collection and compression take milliseconds."""
        try:
            scrape = self._render_metrics(accept, accept_encoding)
        except LookupError as missing:
            return 404, f"{missing}\n".encode(), (*TEXT_HEADERS, VARY)
        except Exception:
            log.exception("rendering /metrics failed")
            return 500, b"rendering metrics failed; see the agent log\n", (*TEXT_HEADERS, VARY)
        return 200, scrape.body, _scrape_headers(scrape)


def _scrape_headers(scrape: Scrape) -> Headers:
    encoding = (("Content-Encoding", scrape.encoding),) if scrape.encoding else ()
    return (("Content-Type", scrape.content_type), VARY, *encoding)
