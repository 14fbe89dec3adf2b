"""The metrics port's listening socket: bind, accept, the connection cap, start and stop.

h11 parses HTTP/1.1 on an asyncio loop of its own worker (why not a server framework: BENCHMARKS.md).
This module accepts: a backlog that absorbs bursts, the connection cap, backing off when descriptors
run out, a 400 for plain HTTP on the TLS port, the certificate reloaded when it is rotated.

Probes get through a full cap: whoever holds every connection must not fail kubelet's liveness
probe. A few connections beyond the cap (``probe_slots``) may each send one request; a probe is
answered, anything else gets 503. When all are taken a new one evicts the oldest whose request is
not read yet, silent ones first; the accept loop drains the backlog without yielding, so a probe
queued behind a flood is accepted with its request already there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.export.exposition import Scrape
from otel_vmi_hv.server.connection import Connection, State
from otel_vmi_hv.server.endpoints import TEXT, Endpoints, Readiness, ServerLimits
from otel_vmi_hv.server.tls_reload import ReloadingTLS
from otel_vmi_hv.worker import Worker

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 65535  # the kernel caps it at net.core.somaxconn: a burst must not find it full
# Out of descriptors: accepting again at once would spin at 100 % CPU. A local resource, no fleet to
# spread, hence no jitter.
ACCEPT_BACKOFF = Backoff(initial=0.01, maximum=1.0, jitter=0.0)
MAX_LINGERING_REFUSALS = 64  # beyond the probe slots, this many get a 503; the rest are closed


def _canned(status: HTTPStatus, body: bytes, *headers: str) -> bytes:
    """A whole answer written without h11, for connections that never reach the parser."""
    head = [f"HTTP/1.1 {status} {status.phrase}", f"Content-Type: {TEXT}", "Connection: close", *headers]
    return "\r\n".join([*head, f"Content-Length: {len(body)}", "", ""]).encode() + body


# Go's answer to plain HTTP on a TLS port, and the refusal beyond the probe slots.
PLAIN_HTTP_ON_TLS_PORT = _canned(HTTPStatus.BAD_REQUEST, b"Client sent an HTTP request to an HTTPS server.\n")
TOO_MANY_CONNECTIONS = _canned(HTTPStatus.SERVICE_UNAVAILABLE, b"too many connections\n", "Retry-After: 1")
OUT_OF_FDS = "cannot accept HTTP connections: %s (%d open connections); retrying until descriptors are free"
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_LISTEN_REASONS = {
    errno.EADDRINUSE: "the address is already in use (another process listens there)",
    errno.EADDRNOTAVAIL: "the address is not one of this host's",
}


class ListenError(OSError):
    """The listening socket could not be opened; names the address so the operator can fix it."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"cannot listen on {address}: {reason}")
        self.host, self.port, self.reason = host, port, reason


def open_listener(host: str, port: int) -> socket.socket:
    """Bind and listen, or raise ListenError saying why in an operator's words."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ListenError(host, port, f"the host cannot be resolved ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        reason = _LISTEN_REASONS.get(error.errno or 0) or error.strerror or str(error)
        if error.errno == errno.EACCES and 0 < port < 1024:
            reason = "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE"
        raise ListenError(host, port, reason) from None
    return sock


@dataclass(eq=False)
class _ProbeSlot:
    """A connection accepted beyond the cap, for one request; dropping it loses no answer while its
    ``connection`` is still reading the request head."""

    sock: socket.socket
    spoke: bool  # bytes were already waiting when it was accepted, as a probe's request is
    connection: Connection
    started: bool = False  # its task runs: from then on the task closes the socket


def _has_bytes_waiting(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing yet (EAGAIN), or already reset
        return False


class HttpServer:
    """Serves /metrics, /healthz and /readyz from an event loop thread; renders in a small pool so a
    slow collection never delays a probe."""

    def __init__(
        self,
        host: str,
        port: int,
        render_metrics: Callable[[str, str], Scrape],
        readiness: Readiness,
        *,
        render_cached: Callable[[str, str], Scrape | None] | None = None,
        tls: ReloadingTLS | None = None,
        limits: ServerLimits = ServerLimits(),  # noqa: B008 - frozen
    ) -> None:
        self.limits = limits
        self._tls = tls
        self._listener = open_listener(host, port)
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._loop_exception)
        self.endpoints = Endpoints(render_metrics, readiness, limits, self.loop, render_cached)
        self._worker: Worker | None = None
        self._serving: set[asyncio.Task[None]] = set()
        self.connections = 0  # within the cap
        self._probe_slots: dict[_ProbeSlot, asyncio.Task[None]] = {}  # beyond it, oldest first
        self._refusals: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        self._track(self._accept_loop())
        self._worker = Worker("http", lambda _: self.loop.run_forever())
        self._worker.start()

    def stop(self) -> None:
        if self._worker is None:
            self._listener.close()
            return
        with contextlib.suppress(TimeoutError):  # the loop is stopped below all the same
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout=1)
        self.loop.call_soon_threadsafe(self.loop.stop)
        stopped = self._worker.join(timeout=1)
        self.endpoints.shutdown()
        if stopped:
            self.loop.close()

    # ------------------------------------------------------------------ accepting

    async def _shutdown(self) -> None:
        self._listener.close()
        for task in list(self._serving):  # the accept loop among them
            task.cancel()

    async def _accept_loop(self) -> None:
        failures, since = 0, 0.0
        while True:
            try:
                sock, _ = await self.loop.sock_accept(self._listener)
            except OSError as error:
                if error.errno in _OUT_OF_RESOURCES:  # the connection stays queued: wait, say it once
                    if not failures:
                        since = time.monotonic()
                        log.warning(OUT_OF_FDS, os.strerror(error.errno or 0), self.connections)
                    failures += 1
                    await asyncio.sleep(ACCEPT_BACKOFF.delay(failures))
                elif self._listener.fileno() == -1:
                    return
                else:
                    self.endpoints.client_noise.debug("accept failed: %s", error)
                continue
            if failures:
                log.info("accepting HTTP connections again after %.1fs", time.monotonic() - since)
                failures = 0
            if self.connections < self.limits.max_connections:
                self.connections += 1
                self._track(self._serve(sock, Connection(self.endpoints)))
            elif self._free_probe_slot():
                connection = Connection(self.endpoints, beyond_cap=True)
                slot = _ProbeSlot(sock, _has_bytes_waiting(sock), connection)
                self._probe_slots[slot] = self._track(self._serve(sock, connection, slot))
            else:
                self._refuse(sock)

    def _track(self, serving: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(serving)
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)
        return task

    def _free_probe_slot(self) -> bool:
        """Whether a connection beyond the cap gets a probe slot; when all are taken, the oldest
        one whose request has not been read is dropped for it, silent ones first."""
        if len(self._probe_slots) < self.limits.probe_slots:
            return True
        waiting = [slot for slot in self._probe_slots if slot.connection.state is State.READING_HEAD]
        oldest = min(waiting, key=lambda slot: slot.spoke, default=None)  # silent ones first
        if oldest is None:
            return False
        task = self._probe_slots.pop(oldest)
        if not oldest.started:
            # Accepted in the same burst: its task never runs, so its descriptor is closed here, or
            # a burst as deep as the backlog would hold that many descriptors until the next turn.
            oldest.sock.close()
        task.cancel()
        self.endpoints.client_noise.debug("dropping a connection beyond the limit that sent no request yet")
        return True

    def _refuse(self, sock: socket.socket) -> None:
        self.endpoints.client_noise.debug(
            "refusing a connection: %d open (the limit) and %d beyond it for probes",
            self.connections,
            len(self._probe_slots),
        )
        if self._tls is not None or len(self._refusals) >= MAX_LINGERING_REFUSALS:
            sock.close()
            return
        refusal = self._track(self._answer_and_close(sock, TOO_MANY_CONNECTIONS))
        self._refusals.add(refusal)
        refusal.add_done_callback(self._refusals.discard)

    async def _answer_and_close(self, sock: socket.socket, answer: bytes) -> None:
        """Send ``answer``, then read what the client sent for a moment: closing with its request
        unread would reset the connection and lose the answer."""
        try:
            await asyncio.wait_for(self.loop.sock_sendall(sock, answer), 1.0)
            sock.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(1.0):
                while await self.loop.sock_recv(sock, 4096):
                    pass
        except (TimeoutError, OSError):
            pass
        finally:
            sock.close()

    async def _serve(
        self, sock: socket.socket, connection: Connection, slot: _ProbeSlot | None = None
    ) -> None:
        """Serve one accepted connection until it closes; with ``slot``, one beyond the cap."""
        head_timeout = self.limits.head_timeout(beyond_cap=slot is not None)
        if slot is not None:
            slot.started = True
        try:
            if self._tls is not None and not await self._speaks_tls(sock, head_timeout):
                return
            context = self._tls.context() if self._tls else None
            transport, _ = await self.loop.connect_accepted_socket(
                lambda: connection, sock, ssl=context, ssl_handshake_timeout=head_timeout if context else None
            )
            try:
                await connection.closed
            except asyncio.CancelledError:
                transport.abort()  # the server stops, or the slot went to a newer connection
                raise
        except (TimeoutError, OSError) as error:
            self.endpoints.client_noise.debug("connection failed before its first request: %s", error)
            sock.close()
        except asyncio.CancelledError:
            sock.close()  # cancelled before the transport took the socket over (a no-op after)
            raise
        finally:
            if slot is None:
                self.connections -= 1
            else:
                self._probe_slots.pop(slot, None)

    async def _speaks_tls(self, sock: socket.socket, timeout: float) -> bool:
        """Peek at the first byte: a TLS handshake record starts with 0x16. Anything else gets Go's
        400 in plain text instead of a bare reset, so a misconfigured scraper says what is wrong."""
        readable = asyncio.Event()
        self.loop.add_reader(sock.fileno(), readable.set)
        try:
            await asyncio.wait_for(readable.wait(), timeout)
        finally:
            self.loop.remove_reader(sock.fileno())
        if sock.recv(1, socket.MSG_PEEK) == b"\x16":
            return True
        await self._answer_and_close(sock, PLAIN_HTTP_ON_TLS_PORT)
        return False

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError | asyncio.TimeoutError):
            # Resets, aborted handshakes, bad TLS records: what clients do, not an agent fault.
            self.endpoints.client_noise.debug("%s: %s", context.get("message", "connection error"), error)
            return
        log.error("HTTP server: %s", context.get("message"), exc_info=error)
