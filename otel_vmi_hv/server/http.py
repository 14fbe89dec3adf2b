"""The HTTP endpoints on the Prometheus port: /metrics, /healthz, /readyz.

Each answer comes from state computed elsewhere (the rendered exposition, readiness flags), so
parallel probes and scrapes never trigger parallel work against libvirt or the API server.

HTTP/1.1 is parsed and framed by h11 (chosen by measurement over aiohttp's server and the standard
library's, see BENCHMARKS.md: a few KiB per idle connection and half a MiB of code, where aiohttp's
server costs 11 MiB resident before the first connection) on an asyncio loop of its own thread. What an
exposed port needs around the parser is here: a cap on connections and on concurrent scrapes, a
deadline for request headers (Go's ReadHeaderTimeout), backing off when file descriptors run out, a
400 for plain HTTP on the TLS port, and a certificate reloaded when cert-manager rotates it.
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
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import h11

from otel_vmi_hv.config import Settings
from otel_vmi_hv.server.client_noise import RateLimitedLog
from otel_vmi_hv.server.tls_reload import ReloadingTLS

log = logging.getLogger(__name__)
# Malformed requests, resets, bad TLS records: a client's fault, at most a rate-limited debug line.
client_log = logging.getLogger(__name__ + ".client")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
SERVER_HEADER = "otel-vmi-hv"
GZIP_MIN_BYTES = 4096
MIN_BACKLOG = 128
LINGER_SECONDS = 2.0  # how long an unread request body is read and dropped before closing instead
ACCEPT_BACKOFF_MAX = 1.0
RENDER_THREADS = 2
MAX_HEAD_BYTES = 16 * 1024  # request line and headers; larger gets 431
WAITING_FOR_READER = "the client to read the response"
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
    """One client connection: h11 parses, this class answers and keeps the deadlines.

    Timers: the request headers must be complete ``read_header_timeout`` after the connection
    opens or after the first byte of a later request; an idle keep-alive connection, or a client
    that stops reading its response, is dropped after ``idle_timeout``.
    """

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle = False  # waiting for the first byte of the next request
        self._busy = False  # a response is being rendered
        self._buffered = 0  # bytes received while busy (pipelined requests)
        self._rendering: asyncio.Future[Any] | None = None
        self._write_paused = False
        self.closed: asyncio.Future[None] = server.loop.create_future()

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Headers and body go out in one write, but a pipelined second answer must not wait
            # for the client's delayed ACK either.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(self._server.limits.read_header_timeout, "request headers")

    def data_received(self, data: bytes) -> None:
        if self._idle:
            self._idle = False
            self._arm(self._server.limits.read_header_timeout, "request headers")
        self._h11.receive_data(data)
        if self._busy:
            self._buffered += len(data)
            self._update_reading()
            return
        self._process()

    def eof_received(self) -> bool:
        self._h11.receive_data(b"")
        if not self._busy:
            self._process()
        # Keep the socket to answer a request that ended with a half-close; TLS cannot half-close
        # (asyncio warns when asked to).
        return self._transport is not None and self._transport.get_extra_info("sslcontext") is None

    def pause_writing(self) -> None:
        # A client that stops reading: stop reading its requests too, and give it a deadline.
        self._write_paused = True
        self._update_reading()
        self._disarm()
        self._arm(self._server.limits.idle_timeout, WAITING_FOR_READER)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()
        if self._idle:
            self._arm(self._server.limits.idle_timeout, "the next request")
        elif self._h11.our_state is h11.DONE and self._h11.their_state is not h11.DONE:
            self._arm(self._server.limits.read_header_timeout, "the rest of the request body")
        else:
            self._disarm()
        self._server.loop.call_soon(self._process)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None
        if self._rendering is not None:
            self._rendering.cancel()  # nobody to answer: a scrape still queued is not rendered
        if not self.closed.done():
            self.closed.set_result(None)

    def _update_reading(self) -> None:
        """Read from the client unless its answers pile up: pipelined requests while a scrape
        renders, or responses it does not read."""
        if self._transport is None or self._transport.is_closing():
            return
        if self._write_paused or (self._busy and self._buffered > MAX_HEAD_BYTES):
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    # ------------------------------------------------------------------ the request cycle

    def _process(self) -> None:
        """Handle what h11 has parsed, one request after another (pipelining), iteratively."""
        while self._transport is not None and not self._busy and not self._write_paused:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as error:
                self._refuse_malformed(error)
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED or isinstance(event, h11.EndOfMessage):
                if self._h11.our_state is h11.DONE:
                    if not self._next_cycle():
                        return
                elif event is h11.PAUSED:
                    return  # h11 waits for an answer that is not sent yet
            elif isinstance(event, h11.Request):
                self._disarm()
                self._server.answer(self, event)
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return
            # h11.Data: a request body, read and dropped

    def start_rendering(self, rendering: asyncio.Future[Any]) -> None:
        self._busy = True
        self._rendering = rendering

    def respond(self, status: int, body: bytes, headers: list[tuple[str, str]], head_only: bool) -> None:
        """Send one complete response; then go on with what the client sent meanwhile."""
        self._busy = False
        self._rendering = None
        if self._transport is None or self._transport.is_closing():
            return
        if self._h11.their_state is not h11.DONE:
            headers = [*headers, ("Connection", "close")] if status >= 400 else headers
        try:
            data = self._h11.send(
                h11.Response(
                    status_code=status,
                    reason=HTTPStatus(status).phrase,
                    headers=self._server.headers(headers, body),
                )
            )
            if not head_only:
                data += self._h11.send(h11.Data(data=body))
            data += self._h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as error:
            log.error("HTTP response could not be framed: %s", error)
            self._close()
            return
        self._transport.write(data)
        self._buffered = 0
        self._update_reading()
        self._next_cycle()

    def resume(self) -> None:
        """After an answer rendered in the pool: go on with requests that arrived meanwhile."""
        self._process()

    def _next_cycle(self) -> bool:
        """After our answer: close, or get ready for the next request; False when nothing more is
        to be read from this connection now."""
        if self._transport is None:
            return False
        if self._h11.our_state is h11.MUST_CLOSE or self._h11.their_state in (h11.MUST_CLOSE, h11.CLOSED):
            self._close()
            return False
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            self._idle = True
            self._arm(self._server.limits.idle_timeout, "the next request")
            return True
        if self._h11.our_state is h11.DONE:
            # Answered before the request body ended: it is read and dropped, within the deadline.
            self._arm(self._server.limits.read_header_timeout, "the rest of the request body")
            return True
        return False

    def _refuse_malformed(self, error: h11.RemoteProtocolError) -> None:
        peer = self._transport.get_extra_info("peername") if self._transport else None
        self._server.client_noise.debug("malformed request from %s: %s", peer, error)
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE) and self._transport is not None:
            status = error.error_status_hint
            body = f"{HTTPStatus(status).phrase}: {error}\n".encode(errors="replace")
            try:
                data = self._h11.send(
                    h11.Response(
                        status_code=status,
                        reason=HTTPStatus(status).phrase,
                        headers=self._server.headers([("Content-Type", TEXT), ("Connection", "close")], body),
                    )
                )
                data += self._h11.send(h11.Data(data=body)) + self._h11.send(h11.EndOfMessage())
                self._transport.write(data)
            except h11.LocalProtocolError:
                pass
        self._close()

    def _close(self) -> None:
        self._disarm()
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------------ deadlines

    def _arm(self, seconds: float, waiting_for: str) -> None:
        if self._write_paused and waiting_for != WAITING_FOR_READER:
            return  # the deadline for reading the answers comes first
        self._disarm()
        self._timer = self._server.loop.call_later(seconds, self._expired, waiting_for)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, waiting_for: str) -> None:
        self._timer = None
        if self._transport is None:
            return
        if not (self._idle and waiting_for == "the next request"):
            peer = self._transport.get_extra_info("peername")
            self._server.client_noise.debug("closing connection from %s: no %s in time", peer, waiting_for)
        self._transport.abort()


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
        self._accept_task: asyncio.Task[None] | None = None
        self._serving: set[asyncio.Task[None]] = set()
        self.connections = 0
        self._refusing = 0
        self._in_flight = 0
        self._gzip_cache: tuple[bytes, bytes] = (b"", b"")
        self._date = (0, "")
        self.client_noise = RateLimitedLog(client_log)
        self._fd_exhausted_since: float | None = None

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        self.loop.run_until_complete(self._setup())
        self._thread = threading.Thread(target=self.loop.run_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            self._listener.close()
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        try:
            future.result(timeout=1)
        except Exception as error:
            log.debug("HTTP server shutdown: %s", error)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=1)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if not self._thread.is_alive():
            self.loop.close()

    # ------------------------------------------------------------------ accepting

    async def _setup(self) -> None:
        self._accept_task = self.loop.create_task(self._accept_loop())

    async def _shutdown(self) -> None:
        self._listener.close()
        if self._accept_task is not None:
            self._accept_task.cancel()
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
            transport, connection = await self.loop.connect_accepted_socket(
                lambda: _Connection(self),
                sock,
                ssl=context,
                ssl_handshake_timeout=self.limits.read_header_timeout if context else None,
            )
            try:
                await connection.closed
            except asyncio.CancelledError:
                transport.abort()  # the server stops
                raise
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

    def answer(self, connection: _Connection, request: h11.Request) -> None:
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

    def _metrics(self, connection: _Connection, request: h11.Request, head_only: bool) -> None:
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
