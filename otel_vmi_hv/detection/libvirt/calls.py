"""Read-only libvirt calls that can never block the agent.

A SIGSTOP'd or wedged daemon makes ``open()`` and ``XMLDesc()`` hang forever (the kernel still
accepts on the socket backlog), and keepalive cannot protect ``open()``. So every call runs on a
pool worker (``call_pool``) and its caller waits at most ``timeout``; each daemon's circuit breaker
(``daemons``) turns a hung daemon into ``busy`` answers and says when it answers again. What is
asked (a domain's XML, the list of domains) belongs to ``domain.py`` and ``sources/libvirt.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from otel_vmi_hv.detection.libvirt.call_pool import Abandoned, Call, CallPool
from otel_vmi_hv.detection.libvirt.connections import Connections, notify
from otel_vmi_hv.detection.libvirt.daemons import Daemon, LibvirtUnavailable
from otel_vmi_hv.detection.libvirt.event_loop import EventLoop
from otel_vmi_hv.model import ConnectionState, FailureReason
from otel_vmi_hv.worker import stop_all

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSE_TIMEOUT = 1.0  # how long close() waits for the connections to be let go of
MAX_INFLIGHT_TOTAL = 64  # calls at once over every daemon


class LibvirtCalls:
    """Bounded read-only calls to libvirt daemons, one reused connection per URI.

    ``clock`` says when a daemon in backoff may be tried again; waiting for a call is real time.
    """

    def __init__(
        self,
        timeout: float,
        *,
        keep_connections: bool = True,
        open_read_only: Callable[[str], Any] = libvirt.openReadOnly,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self._clock = clock
        self._pool = CallPool("libvirt-call")
        self._daemons: dict[str, Daemon] = {}
        self._closed = False  # after close(): no new daemon, and a call still running lets go after
        self._lock = threading.Lock()
        self._inflight = threading.BoundedSemaphore(MAX_INFLIGHT_TOTAL)
        # One daemon serving every domain (standalone): keep its connection. One daemon per VMI
        # (KubeVirt launchers), asked once per domain lifetime: an open connection per running VMI
        # would cost memory and a socket each for nothing, so close it after each call, and forget
        # a launcher's daemon once it answered.
        self._connections = Connections(open_read_only, clock, keep_connections)

    def subscribe(
        self,
        *,
        recovered: Callable[[str], None] | None = None,
        disconnected: Callable[[str], None] | None = None,
    ) -> None:
        """Be told (on a libvirt thread) when a daemon answers again, or a kept connection closed."""
        self._connections.recovered.extend(filter(None, [recovered]))
        self._connections.disconnected.extend(filter(None, [disconnected]))

    def call(self, uri: str, op: Callable[[Any], T]) -> T:
        """``op(connection)`` on a worker, waiting at most ``timeout``; raises LibvirtUnavailable."""
        result = self._call(uri, op)
        if not self._connections.keep:  # forget a launcher's daemon that has no state worth keeping
            with self._lock:
                daemon = self._daemons.get(uri)
                if daemon is not None and daemon.conn is None and not (daemon.stuck_calls or daemon.failures):
                    del self._daemons[uri]
        return result

    def connection_id(self, uri: str) -> int:
        """Generation of the current connection (grows with every reconnect); 0 when not connected.

        Not id(conn): CPython reuses the address of a freed connection object for the next one.
        """
        daemon = self._daemons.get(uri)
        return daemon.generation if daemon is not None and daemon.conn is not None else 0

    def states(self) -> dict[str, ConnectionState]:
        """State of every known daemon: idle, connected, disconnected or hung (no I/O)."""
        with self._lock:
            return {uri: daemon.state for uri, daemon in self._daemons.items()}

    def forget(self, uri: str) -> None:
        """Close and drop the connection of a daemon no VMI needs any more (launcher gone)."""
        with self._lock:
            daemon = self._daemons.pop(uri, None)
        if daemon is not None:
            self._connections.drop(daemon)
        self._connections.sockets.release(uri)

    def register_events(self, uri: str, register: Callable[[Any], int]) -> None:
        """``register(connection)`` adds a domain event callback and returns its id (raises
        LibvirtUnavailable). The id stays with the connection, which deregisters it before closing.
        Nothing is registered while libvirt's event loop is not running: nothing would deliver events.
        """
        if not EventLoop.running():
            return

        def op(conn: Any) -> None:
            callback_id = register(conn)
            with self._lock:
                daemon = self._daemons.get(uri)
            if daemon is None:  # closed meanwhile: no one else would deregister it
                conn.domainEventDeregisterAny(callback_id)
                return
            with daemon.lock:
                daemon.event_callbacks.append((conn, callback_id))

        self.call(uri, op)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Close every connection and wait, at most ``timeout``, until libvirt has let go of each.

        Only then may the caller stop libvirt's event loop and the interpreter exit: a connection
        still open keeps that loop working on it, and its close and event callbacks calling into
        Python. False when a close did not finish in time (its daemon is hung).
        """
        with self._lock:
            self._closed = True
            daemons = list(self._daemons.values())
            self._daemons.clear()
        closing = [worker for daemon in daemons if (worker := self._connections.drop(daemon)) is not None]
        closed = stop_all(closing, timeout)
        self._connections.sockets.close()
        if not closed:
            stuck = sum(worker.alive for worker in closing)
            log.warning("%d libvirt connection(s) not closed within %.1fs (hung daemon)", stuck, timeout)
        return closed

    def _daemon(self, uri: str) -> Daemon:
        with self._lock:
            if self._closed:
                raise LibvirtUnavailable(FailureReason.UNREACHABLE, "the agent is stopping")
            daemon = self._daemons.get(uri)
            if daemon is None:
                daemon = self._daemons[uri] = Daemon(uri)
            return daemon

    def _call(self, uri: str, op: Callable[[Any], T]) -> T:
        daemon = self._daemon(uri)
        deadline = time.monotonic() + self.timeout
        daemon.admit(self._clock(), deadline, self.timeout)
        if not self._inflight.acquire(blocking=False):
            daemon.slots.release()
            raise LibvirtUnavailable(FailureReason.BUSY, "too many libvirt calls still running")
        call = Call(lambda: self._run(daemon, op), lambda error: self._returned_late(daemon, error))
        try:
            self._pool.submit(call.run)
        except RuntimeError as error:  # "can't start new thread": out of threads or pids
            self._free_slot(daemon)
            raise LibvirtUnavailable(FailureReason.BUSY, f"cannot start a libvirt worker: {error}") from None
        try:
            return call.result(deadline - time.monotonic(), lambda: daemon.overran(self.timeout))
        except Abandoned:
            why = f"no answer from {daemon.uri} within {self.timeout:g}s"
            raise LibvirtUnavailable(FailureReason.TIMEOUT, why) from None
        except LibvirtUnavailable:
            raise
        except Exception as error:
            raise LibvirtUnavailable(FailureReason.INTERNAL_ERROR, repr(error)) from error

    def _free_slot(self, daemon: Daemon) -> None:
        daemon.slots.release()
        self._inflight.release()

    def _run(self, daemon: Daemon, op: Callable[[Any], T]) -> T:
        """On a pool worker: the call itself, holding its slot until it returns."""
        try:
            return self._connections.run(daemon, op)
        finally:
            self._free_slot(daemon)
            if self._closed:  # close() has passed this daemon by: let go of what the call opened
                self._connections.drop(daemon)

    def _returned_late(self, daemon: Daemon, error: Exception | None) -> None:
        if daemon.returned_late(error):
            notify(self._connections.recovered, daemon.uri, "recovery")
