"""One client connection on the metrics port: h11 parses and frames, this module keeps the deadlines.

A connection is in one ``State`` at a time, and each state has its deadline: the request headers must
be complete ``read_header_timeout`` after the connection opens or after the first byte of a later
request; an idle keep-alive connection, or a client that stops reading its response, is dropped after
``idle_timeout``; a request body left unread after the answer is read and dropped within
``read_header_timeout``. Rendering /metrics has no deadline of its own (the renderer bounds it).

A connection accepted beyond the connection cap (``beyond_cap``) serves one request, answered only if
it is a probe, and its head must arrive within ``probe_head_timeout``: see server/listener.py.
A client that resets, sends garbage or a corrupt TLS record costs at most a few debug lines a second
(``client_noise``), never an error with a traceback that one hostile client could flood the log with.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from http import HTTPStatus
from typing import Any, cast

import h11

from otel_vmi_hv.server.endpoints import TEXT_HEADERS, Endpoints, Headers

log = logging.getLogger(__name__)


MAX_HEAD_BYTES = 16 * 1024  # request line and headers; larger gets 431


class State(enum.Enum):
    """What the connection waits for; the value names it in the log line when the wait times out."""

    READING_HEAD = "request headers"
    IDLE = "the next request"  # keep-alive between requests; timing out here is no client fault
    RENDERING = "the rendered metrics"
    WRITING = "the client to read the response"  # the transport's buffer is full
    LINGERING = "the rest of the request body"  # answered; the body is read and dropped
    CLOSING = "the connection to close"


# States in which requests are read and answered; the others hold what the client sends.
_READING = frozenset({State.READING_HEAD, State.IDLE, State.LINGERING})


class Connection(asyncio.Protocol):
    """One client connection: h11 parses, ``Endpoints`` answers, this class keeps the deadlines.

    While the client does not read (``WRITING``), the request cycle still moves on underneath (an
    answer was just sent: the next state is known); that state takes effect once the client reads
    again, and until then the deadline for reading applies.
    """

    def __init__(self, endpoints: Endpoints, beyond_cap: bool = False) -> None:
        self._loop = endpoints.loop
        self._beyond_cap = beyond_cap  # one request, probes only, closed after the answer
        limits = endpoints.limits
        # RENDERING has no deadline (the renderer's own bounds), CLOSING nothing more to wait for.
        self._deadlines = {
            State.READING_HEAD: limits.head_timeout(beyond_cap),
            State.LINGERING: limits.read_header_timeout,
            State.IDLE: limits.idle_timeout,
            State.WRITING: limits.idle_timeout,
        }
        self._endpoints = endpoints
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.state = State.READING_HEAD  # read by the listener: a probe slot still waiting
        self._after_writing = State.READING_HEAD  # where WRITING goes once the client reads again
        self._buffered = 0  # bytes received while rendering (pipelined requests)
        self._rendering: asyncio.Future[Any] | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(
            asyncio.Transport, transport
        )  # with TCP_NODELAY, as asyncio sets on every TCP transport
        self._enter(State.READING_HEAD)

    def data_received(self, data: bytes) -> None:
        if self._cycle_state() is State.IDLE:
            self._enter(State.READING_HEAD)
        self._h11.receive_data(data)
        if self._cycle_state() is State.RENDERING:
            self._buffered += len(data)
            self._update_reading()
            return
        self._process()

    def eof_received(self) -> bool:
        self._h11.receive_data(b"")
        if self._cycle_state() is not State.RENDERING:
            self._process()
        # Keep the socket to answer a request that ended with a half-close; TLS cannot half-close
        # (asyncio warns when asked to).
        return self._transport is not None and self._transport.get_extra_info("sslcontext") is None

    def pause_writing(self) -> None:
        # A client that stops reading: stop reading its requests too, and give it a deadline.
        if self.state is State.CLOSING:
            return
        self._after_writing = self.state
        self._enter(State.WRITING)
        self._update_reading()

    def resume_writing(self) -> None:
        if self.state is not State.WRITING:
            return
        self.state = self._after_writing
        self._arm()
        self._update_reading()
        self._loop.call_soon(self._process)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.state = State.CLOSING
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
        piled_up = self.state is State.RENDERING and self._buffered > MAX_HEAD_BYTES
        if self.state is State.WRITING or piled_up:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    # ------------------------------------------------------------------ the request cycle

    def _process(self) -> None:
        """Handle what h11 has parsed, one request after another (pipelining), iteratively."""
        while self._transport is not None and self.state in _READING:
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
                self._endpoints.answer(self, event, self._beyond_cap)
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return
            # h11.Data: a request body, read and dropped

    def start_rendering(self, rendering: asyncio.Future[Any]) -> None:
        self._rendering = rendering
        self._enter(State.RENDERING)

    def respond(self, status: int, body: bytes, headers: Headers, head_only: bool) -> None:
        """Send one complete response; after one rendered in the pool, go on with the requests
        that arrived meanwhile (otherwise ``_process`` is already on it)."""
        rendered, self._rendering = self._rendering is not None, None
        if self._transport is None or self._transport.is_closing():
            return
        if self._beyond_cap or (status >= 400 and self._h11.their_state is not h11.DONE):
            headers = (*headers, ("Connection", "close"))
        if self._write(status, body, headers, head_only):
            self._buffered = 0
            self._update_reading()  # writing may have paused at once: the client reads slower than this
            if self._next_cycle() and rendered:
                self._process()

    def _write(self, status: int, body: bytes, headers: Headers, head_only: bool) -> bool:
        """Frame one response with h11 and write it; False, and the connection closed, if h11 refuses."""
        assert self._transport is not None
        try:
            framed = list(self._endpoints.headers(headers, body))
            data = self._h11.send(
                h11.Response(status_code=status, reason=HTTPStatus(status).phrase, headers=framed)
            )
            if not head_only:
                data += self._h11.send(h11.Data(data=body))
            data += self._h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as error:
            log.error("HTTP response could not be framed: %s", error)
            self._close()
            return False
        self._transport.write(data)
        return True

    def _next_cycle(self) -> bool:
        """After our answer: close, or get ready for the next request; False when nothing more is
        to be read from this connection now (only called while connected)."""
        if self._h11.our_state is h11.MUST_CLOSE or self._h11.their_state in (h11.MUST_CLOSE, h11.CLOSED):
            self._close()
            return False
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            self._enter(State.IDLE)
            return True
        if self._h11.our_state is h11.DONE:
            # Answered before the request body ended: it is read and dropped, within the deadline.
            self._enter(State.LINGERING)
            return True
        return False

    def _refuse_malformed(self, error: h11.RemoteProtocolError) -> None:
        peer = self._transport.get_extra_info("peername") if self._transport else None
        self._endpoints.client_noise.debug("malformed request from %s: %s", peer, error)
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE) and self._transport is not None:
            status = error.error_status_hint
            body = f"{HTTPStatus(status).phrase}: {error}\n".encode(errors="replace")
            self._write(status, body, (*TEXT_HEADERS, ("Connection", "close")), head_only=False)
        self._close()

    def _close(self) -> None:
        # Closing flushes what is buffered first: from a client that does not read, the deadline
        # for reading (WRITING) still holds, or it would keep the connection and the answer forever.
        self._enter(State.CLOSING)
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------------ states and deadlines

    def _cycle_state(self) -> State:
        """Where the request cycle stands, looking through a client that does not read."""
        return self._after_writing if self.state is State.WRITING else self.state

    def _enter(self, state: State) -> None:
        """Move to ``state`` and start its deadline; while WRITING, only note it for later."""
        if self.state is State.WRITING and state is not State.WRITING:
            self._after_writing = state
            return
        self.state = state
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        seconds = self._deadlines.get(self.state)
        self._timer = None if seconds is None else self._loop.call_later(seconds, self._expired, self.state)

    def _expired(self, state: State) -> None:
        """Only armed while connected: ``connection_lost`` cancels the timer."""
        assert self._transport is not None
        if state is not State.IDLE:
            peer = self._transport.get_extra_info("peername")
            self._endpoints.client_noise.debug("closing connection from %s: no %s in time", peer, state.value)
        self._transport.abort()
