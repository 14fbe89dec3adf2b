"""The HTTP endpoints on the Prometheus port: /metrics, /healthz, /readyz.

Each answer comes from state computed elsewhere (the rendered exposition, readiness flags), so
parallel probes and scrapes never trigger parallel work against libvirt or the API server.

The server is aiohttp's low-level HTTP/1.1 server (chosen by measurement, see BENCHMARKS.md) on an
asyncio loop of its own thread. The agent owns the accept loop instead of asyncio's, because what an
exposed port needs around the parser is not in aiohttp: a cap on connections, a deadline for request
headers (Go's ReadHeaderTimeout), backing off when file descriptors run out, a 400 for plain HTTP on
the TLS port, and a certificate that is reloaded when cert-manager rotates it.
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from otel_vmi_hv.config import Settings
from otel_vmi_hv.http_client_noise import ClientNoiseFilter, RateLimitedLog
from otel_vmi_hv.tls_reload import ReloadingTLS

log = logging.getLogger(__name__)
# aiohttp reports each malformed request or dropped client with a traceback at ERROR; this logger
# turns those into a rate-limited debug line (they are the client's fault, not the agent's).
client_log = logging.getLogger(__name__ + ".client")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
SERVER_HEADER = "otel-vmi-hv"
GZIP_MIN_BYTES = 4096
MIN_BACKLOG = 128
LINGER_SECONDS = 2.0  # how long an unread request body is read and dropped before closing instead
ACCEPT_BACKOFF_MAX = 1.0
RENDER_THREADS = 2
MAX_LINGERING_REFUSALS = 64  # beyond the connection limit, this many get a 503; the rest are closed
PLAIN_HTTP_ON_TLS_PORT = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
    b"Content-Length: 48\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: 21\r\n\r\ntoo many connections\n"
)
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client may hold; the defaults keep the agent well inside its memory limit."""

    max_connections: int = 512
    max_requests: int = 40  # concurrent /metrics requests, like node_exporter's --web.max-requests
    read_header_timeout: float = 10.0
    idle_timeout: float = 30.0  # longer than the keep-alive gap of any usual scrape interval


def limits_from(settings: Settings) -> ServerLimits:
    return ServerLimits(
        max_connections=settings.web_max_connections,
        max_requests=settings.web_max_requests,
        read_header_timeout=settings.web_read_header_timeout,
        idle_timeout=settings.web_idle_timeout,
    )


class ListenError(OSError):
    """The listening socket could not be opened; names the address so the operator can fix it."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {_host_port(host, port)}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


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


def tls_context(cert_file: str, key_file: str, client_ca_file: str | None) -> ReloadingTLS:
    """Server-side TLS (1.2+, no renegotiation), reloaded when the files change on disk."""
    return ReloadingTLS(cert_file, key_file, client_ca_file)


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


def listen_backlog() -> int:
    """The kernel's accept-queue cap, at least 128: a burst of scrapers must not find it full."""
    try:
        with open("/proc/sys/net/core/somaxconn") as somaxconn:
            return max(MIN_BACKLOG, int(somaxconn.read().strip()))
    except (OSError, ValueError):
        return MIN_BACKLOG


def open_listener(host: str, port: int) -> socket.socket:
    """Bind and listen, or raise ListenError saying why in an operator's words."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ListenError(host, port, f"the host cannot be resolved ({error.strerror})") from None
    except OverflowError:
        raise ListenError(host, port, "not a valid port") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(listen_backlog())
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise ListenError(host, port, _listen_reason(error, port)) from None
    return sock


def _listen_reason(error: OSError, port: int) -> str:
    if error.errno == errno.EADDRINUSE:
        return "the address is already in use (another process listens there)"
    if error.errno == errno.EACCES and 0 < port < 1024:
        return "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE"
    if error.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this host's"
    return error.strerror or str(error)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's protocol inside, the deadlines aiohttp lacks around it."""

    def __init__(self, server: HttpServer, inner: asyncio.Protocol) -> None:
        self._server = server
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.in_request = False
        self.closed: asyncio.Future[None] = server.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._server.connection_by_transport[transport] = self
        self._inner.connection_made(transport)
        self._arm(self._server.limits.read_header_timeout, "request headers")

    def data_received(self, data: bytes) -> None:
        if not self.in_request and self._timer is None:
            # The first byte of a request starts its header deadline; idle keep-alive is aiohttp's.
            self._arm(self._server.limits.read_header_timeout, "request headers")
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        # A client that stops reading its response must not hold the connection forever.
        self._arm(self._server.limits.idle_timeout, "the client to read the response")
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._disarm()
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._transport is not None:
            self._server.connection_by_transport.pop(self._transport, None)
        self._inner.connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def request_started(self) -> None:
        self.in_request = True
        self._disarm()

    def request_finished(self) -> None:
        self.in_request = False

    def _arm(self, seconds: float, waiting_for: str) -> None:
        self._disarm()
        self._timer = self._server.loop.call_later(seconds, self._expired, waiting_for)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, waiting_for: str) -> None:
        self._timer = None
        peer = self._transport.get_extra_info("peername") if self._transport else None
        self._server.client_noise.debug(
            "closing connection from %s: gave up waiting for %s", peer, waiting_for
        )
        if self._transport is not None:
            self._transport.abort()  # type: ignore[attr-defined]


class HttpServer:
    """Serves /metrics, /healthz and /readyz from an event loop thread; renders in a small pool so a
    slow collection never delays a probe."""

    def __init__(
        self,
        host: str,
        port: int,
        render_metrics: Callable[[], bytes],
        readiness: Readiness,
        *,
        tls: ReloadingTLS | None = None,
        limits: ServerLimits = ServerLimits(),
    ) -> None:
        self.host = host
        self.limits = limits
        self._render_metrics = render_metrics
        self._readiness = readiness
        self._tls = tls
        self._listener = open_listener(host, port)
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._loop_exception)
        self._pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="http-render")
        self._thread: threading.Thread | None = None
        self._web: web.Server | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._serving: set[asyncio.Task[None]] = set()
        self.connection_by_transport: dict[asyncio.BaseTransport, _Connection] = {}
        self.connections = 0
        self._refusing = 0
        self._in_flight = 0
        self._gzip_cache: tuple[bytes, bytes] = (b"", b"")
        self.client_noise = RateLimitedLog(client_log)
        self._noise_filter = ClientNoiseFilter(self.client_noise)
        self._fd_exhausted_since: float | None = None

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        client_log.addFilter(self._noise_filter)
        self.loop.run_until_complete(self._setup())
        self._thread = threading.Thread(target=self.loop.run_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        client_log.removeFilter(self._noise_filter)
        if self._thread is None:
            self._listener.close()
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        try:
            future.result(timeout=3)
        except Exception as error:
            log.debug("HTTP server shutdown: %s", error)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=2)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if not self._thread.is_alive():
            self.loop.close()

    # ------------------------------------------------------------------ accepting

    async def _setup(self) -> None:
        self._web = web.Server(
            self._handle,
            loop=self.loop,
            keepalive_timeout=self.limits.idle_timeout,
            lingering_time=LINGER_SECONDS,
            access_log=None,
            logger=client_log,
        )
        self._accept_task = self.loop.create_task(self._accept_loop())

    async def _shutdown(self) -> None:
        self._listener.close()
        if self._accept_task is not None:
            self._accept_task.cancel()
        if self._web is not None:
            await self._web.shutdown(1.0)
        for task in list(self._serving):
            task.cancel()

    async def _accept_loop(self) -> None:
        backoff = 0.01
        while True:
            try:
                sock, _ = await self.loop.sock_accept(self._listener)
            except OSError as error:
                if error.errno not in _OUT_OF_RESOURCES:
                    if self._listener.fileno() == -1:
                        return
                    self.client_noise.debug("accept failed: %s", error)
                    continue
                # Out of descriptors: the pending connection stays queued; accepting again at once
                # would spin at 100 % CPU, so wait, doubling up to a second, and say it once.
                if self._fd_exhausted_since is None:
                    self._fd_exhausted_since = time.monotonic()
                    log.warning(
                        "cannot accept HTTP connections: %s (%d open connections); retrying until "
                        "descriptors are free",
                        os.strerror(error.errno or 0),
                        self.connections,
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX)
                continue
            backoff = 0.01
            if self._fd_exhausted_since is not None:
                log.info(
                    "accepting HTTP connections again after %.1fs",
                    time.monotonic() - self._fd_exhausted_since,
                )
                self._fd_exhausted_since = None
            if self.connections >= self.limits.max_connections:
                self._refuse(sock)
                continue
            self.connections += 1
            task = self.loop.create_task(self._serve(sock))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    def _refuse(self, sock: socket.socket) -> None:
        self.client_noise.debug("refusing a connection: %d open (the limit)", self.connections)
        if self._tls is not None or self._refusing >= MAX_LINGERING_REFUSALS:
            sock.close()
            return
        self._refusing += 1
        task = self.loop.create_task(self._answer_refused(sock))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _answer_refused(self, sock: socket.socket) -> None:
        """503, then read what the client sent for a moment: closing with its request unread would
        reset the connection and lose the answer."""
        try:
            sock.setblocking(False)
            await asyncio.wait_for(self.loop.sock_sendall(sock, TOO_MANY_CONNECTIONS), 1.0)
            sock.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(1.0):
                while await self.loop.sock_recv(sock, 4096):
                    pass
        except (TimeoutError, OSError):
            pass
        finally:
            sock.close()
            self._refusing -= 1

    async def _serve(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            context: ssl.SSLContext | None = None
            if self._tls is not None:
                if not await self._speaks_tls(sock):
                    return
                context = self._tls.context()
            assert self._web is not None
            web_server = self._web
            _, connection = await self.loop.connect_accepted_socket(
                lambda: _Connection(self, web_server()),
                sock,
                ssl=context,
                ssl_handshake_timeout=self.limits.read_header_timeout if context else None,
            )
            await connection.closed
        except (TimeoutError, OSError) as error:
            self.client_noise.debug("connection failed before its first request: %s", error)
            sock.close()
        finally:
            self.connections -= 1

    async def _speaks_tls(self, sock: socket.socket) -> bool:
        """Peek at the first byte: a TLS handshake record starts with 0x16. Anything else gets Go's
        400 in plain text instead of a bare reset, so a misconfigured scraper says what is wrong."""
        readable: asyncio.Future[None] = self.loop.create_future()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        self.loop.add_reader(sock.fileno(), on_readable)
        try:
            await asyncio.wait_for(readable, self.limits.read_header_timeout)
        finally:
            self.loop.remove_reader(sock.fileno())
        first = sock.recv(1, socket.MSG_PEEK)
        if first == b"\x16":
            return True
        if first:
            try:
                sock.recv(65536)  # the request, so closing does not reset the connection
                await asyncio.wait_for(self.loop.sock_sendall(sock, PLAIN_HTTP_ON_TLS_PORT), 1.0)
                sock.shutdown(socket.SHUT_WR)
            except (TimeoutError, OSError):
                pass
        sock.close()
        return False

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError | asyncio.TimeoutError):
            # Resets, aborted handshakes, bad TLS records: what clients do, not an agent fault.
            self.client_noise.debug("%s: %s", context.get("message", "connection error"), error)
            return
        log.error("HTTP server: %s", context.get("message"), exc_info=error)

    # ------------------------------------------------------------------ answering

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        connection = self.connection_by_transport.get(request.transport) if request.transport else None
        if connection is not None:
            connection.request_started()
        try:
            return await self._answer(request)
        finally:
            if connection is not None:
                connection.request_finished()

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        if tuple(request.version) not in ((1, 0), (1, 1)):
            # HTTP/0.9 has no headers to end a request; HTTP/2 and later need another protocol.
            refused = _text(505, "only HTTP/1.0 and HTTP/1.1 are served\n")
            refused.force_close()
            return refused
        if request.method not in ("GET", "HEAD"):
            return _text(405, "only GET and HEAD are served\n", {"Allow": "GET, HEAD"})
        path = request.path
        if path == "/metrics":
            return await self._metrics(request)
        if path == "/healthz":
            return _text(200, "ok\n")
        if path == "/readyz":
            pending = self._readiness.pending()
            if pending:
                return _text(503, "not ready: " + ", ".join(pending) + "\n")
            return _text(200, "ready\n")
        if path == "/":
            return _text(200, "otel-vmi-hv: /metrics /healthz /readyz\n")
        return _text(404, "not found; try /metrics, /healthz or /readyz\n")

    async def _metrics(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._in_flight >= self.limits.max_requests:
            return _text(
                503,
                f"too many concurrent scrapes (limit {self.limits.max_requests})\n",
                {"Retry-After": "1"},
            )
        self._in_flight += 1
        try:
            want_gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))
            status, body, encoding = await self.loop.run_in_executor(self._pool, self._render, want_gzip)
        finally:
            self._in_flight -= 1
        headers = {"Vary": "Accept-Encoding"}
        if encoding:
            headers["Content-Encoding"] = encoding
        if status != 200:
            return _text(status, body.decode(), headers)
        return web.Response(
            status=200,
            body=body,
            headers={"Content-Type": METRICS_CONTENT_TYPE, "Server": SERVER_HEADER, **headers},
        )

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


def _text(status: int, body: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=body.encode(),
        headers={"Content-Type": TEXT, "Server": SERVER_HEADER, **(headers or {})},
    )
