"""Read-only libvirt calls that can never block the agent.

A SIGSTOP'd or wedged daemon makes ``open()`` and ``XMLDesc()`` hang forever (the kernel still
accepts on the socket backlog), and keepalive cannot protect ``open()``. So every call runs on a
pool worker (``call_pool``) and its caller waits at most ``timeout``; each daemon's circuit breaker
(``daemons``) turns a hung daemon into ``busy`` answers and says when it answers again. What is
asked (a domain's XML, the list of domains) belongs to ``domain.py`` and ``sources/libvirt.py``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from otel_vmi_hv.detection.libvirt.call_pool import Abandoned, Call, CallPool
from otel_vmi_hv.detection.libvirt.daemons import (
    CONNECTION_ERRORS,
    Daemon,
    LibvirtUnavailable,
    alive,
    close_connection,
    connect_reason,
    describe,
)
from otel_vmi_hv.detection.libvirt.event_loop import EventLoop
from otel_vmi_hv.detection.libvirt.socket_paths import SocketPathShortener
from otel_vmi_hv.model import FailureReason
from otel_vmi_hv.worker import Worker, run_once, stop_all

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSE_TIMEOUT = 1.0  # how long close() waits for the connections to be let go of
MAX_INFLIGHT_TOTAL = 64  # calls at once over every daemon
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3


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
        # One daemon serving every domain (standalone): keep its connection. One daemon per VMI
        # (KubeVirt launchers), asked once per domain lifetime: an open connection per running VMI
        # would cost memory and a socket each for nothing, so close it after each call, and forget
        # a launcher's daemon once it answered.
        self._keep_connections = keep_connections
        self._open = open_read_only
        self._clock = clock
        self._sockets = SocketPathShortener()
        self._pool = CallPool("libvirt-call")
        self._daemons: dict[str, Daemon] = {}
        self._lock = threading.Lock()
        self._inflight_total = 0
        self._on_recovered: list[Callable[[str], None]] = []
        self._on_disconnected: list[Callable[[str], None]] = []

    def subscribe(
        self,
        *,
        recovered: Callable[[str], None] | None = None,
        disconnected: Callable[[str], None] | None = None,
    ) -> None:
        """Be told (on a libvirt thread) when a daemon answers again, or a kept connection closed."""
        if recovered is not None:
            self._on_recovered.append(recovered)
        if disconnected is not None:
            self._on_disconnected.append(disconnected)

    def call(self, uri: str, op: Callable[[Any], T]) -> T:
        """``op(connection)`` on a worker, waiting at most ``timeout``; raises LibvirtUnavailable."""
        result = self._call(uri, op)
        if not self._keep_connections:
            self._drop_if_settled(uri)
        return result

    def connection_id(self, uri: str) -> int:
        """Generation of the current connection (grows with every reconnect); 0 when not connected.

        Not id(conn): CPython reuses the address of a freed connection object for the next one.
        """
        daemon = self._daemons.get(uri)
        return daemon.generation if daemon is not None and daemon.conn is not None else 0

    def states(self) -> dict[str, str]:
        """State of every known daemon: idle, connected, disconnected or hung (no I/O)."""
        with self._lock:
            return {uri: daemon.state for uri, daemon in self._daemons.items()}

    def forget(self, uri: str) -> None:
        """Close and drop the connection of a daemon no VMI needs any more (launcher gone)."""
        with self._lock:
            daemon = self._daemons.pop(uri, None)
        if daemon is not None:
            self._drop_connection(daemon)
        self._sockets.release(uri)

    def register_events(self, uri: str, register: Callable[[Any], int]) -> bool:
        """``register(connection)`` adds a domain event callback and returns its id (raises
        LibvirtUnavailable). The id stays with the connection, which deregisters it before closing.
        False, and nothing registered, while libvirt's event loop is not running.
        """
        if not EventLoop.running():
            return False

        def op(conn: Any) -> None:
            callback_id = register(conn)
            daemon = self._daemon(uri)
            with daemon.lock:
                daemon.event_callbacks.append((conn, callback_id))

        self.call(uri, op)
        return True

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Close every connection and wait, at most ``timeout``, until libvirt has let go of each.

        Only then may the caller stop libvirt's event loop and the interpreter exit: a connection
        still open keeps that loop working on it, and its close and event callbacks calling into
        Python. False when a close did not finish in time (its daemon is hung).
        """
        with self._lock:
            daemons = list(self._daemons.values())
            self._daemons.clear()
        closing = [worker for daemon in daemons if (worker := self._drop_connection(daemon)) is not None]
        closed = stop_all(closing, timeout)
        self._sockets.close()
        if not closed:
            stuck = sum(worker.alive for worker in closing)
            log.warning("%d libvirt connection(s) not closed within %.1fs (hung daemon)", stuck, timeout)
        return closed

    def _drop_if_settled(self, uri: str) -> None:
        """Forget a per-launcher daemon that answered and has nothing in flight: no state to keep."""
        with self._lock:
            daemon = self._daemons.get(uri)
            if daemon is not None and daemon.conn is None and not (daemon.stuck_calls or daemon.failures):
                del self._daemons[uri]

    def _daemon(self, uri: str) -> Daemon:
        with self._lock:
            daemon = self._daemons.get(uri)
            if daemon is None:
                daemon = self._daemons[uri] = Daemon(uri)
            return daemon

    def _call(self, uri: str, op: Callable[[Any], T]) -> T:
        daemon = self._daemon(uri)
        deadline = time.monotonic() + self.timeout
        daemon.admit(self._clock(), deadline, self.timeout)
        with self._lock:
            if self._inflight_total >= MAX_INFLIGHT_TOTAL:
                daemon.slots.release()
                raise LibvirtUnavailable(FailureReason.BUSY, "too many libvirt calls still running")
            self._inflight_total += 1
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
        with self._lock:
            self._inflight_total -= 1

    def _run(self, daemon: Daemon, op: Callable[[Any], T]) -> T:
        """On a pool worker: the call itself, holding its slot until it returns."""
        try:
            return self._with_connection(daemon, op)
        finally:
            self._free_slot(daemon)

    def _returned_late(self, daemon: Daemon, error: Exception | None) -> None:
        if daemon.returned_late(error):
            _notify(self._on_recovered, daemon.uri, "recovery")

    def _with_connection(self, daemon: Daemon, op: Callable[[Any], T]) -> T:
        conn = daemon.conn
        fresh = conn is None
        if fresh:
            conn = self._connect(daemon)
        try:
            result = op(conn)
        except libvirt.libvirtError as error:
            code = error.get_error_code()
            if code != libvirt.VIR_ERR_NO_DOMAIN and (code in CONNECTION_ERRORS or not alive(conn)):
                close_connection(conn, daemon.take_callbacks(conn))  # dead: every RPC fails at once
                daemon.lost(conn)
                self._open_failed(daemon, error)
                raise LibvirtUnavailable(FailureReason.UNREACHABLE, describe(error)) from None
            if fresh:
                self._answered(daemon, conn)
            reason = (
                FailureReason.NO_DOMAIN if code == libvirt.VIR_ERR_NO_DOMAIN else FailureReason.LIBVIRT_ERROR
            )
            raise LibvirtUnavailable(reason, describe(error)) from None
        if fresh:
            self._answered(daemon, conn)
        return result

    def _connect(self, daemon: Daemon) -> Any:
        try:
            conn = self._open(self._sockets.shorten(daemon.uri))
        except (libvirt.libvirtError, OSError) as error:
            raise self._open_failed(daemon, error) from None
        if conn is None:  # old bindings return None instead of raising
            raise LibvirtUnavailable(FailureReason.UNREACHABLE, f"cannot open {daemon.uri}")
        if EventLoop.running():
            with contextlib.suppress(libvirt.libvirtError):  # local drivers (test:///) have none
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            if self._keep_connections:
                self._watch_close(daemon, conn)
        return conn

    def _open_failed(self, daemon: Daemon, error: Exception) -> LibvirtUnavailable:
        failure = LibvirtUnavailable(connect_reason(error), self._sockets.explain(describe(error)))
        if daemon.open_failed(failure, self._clock()):
            # With one daemon per launcher, the VMI's own "unknown" warning already says this.
            (log.warning if self._keep_connections else log.debug)(
                "libvirt at %s is unreachable: %s", daemon.uri, failure.detail
            )
        return failure

    def _answered(self, daemon: Daemon, conn: Any) -> None:
        was_failing, spare = daemon.answered(conn, self._keep_connections)
        if spare is not None:
            close_connection(spare, [])
        if was_failing:
            log.info("reconnected to libvirt at %s", daemon.uri)
            _notify(self._on_recovered, daemon.uri, "recovery")

    def _watch_close(self, daemon: Daemon, conn: Any) -> None:
        """Learn at once when a kept connection dies (daemon killed or restarted), not at the next call.

        libvirt reports it on the event-loop thread; the connection is dropped and listeners are
        told, so the standalone source re-lists (and reconnects) instead of waiting for its resync.
        """

        def closed(_conn: Any, reason: int, _opaque: object) -> None:
            if daemon.lost(conn, reconnect_now=True):
                log.warning(
                    "connection to libvirt at %s closed (reason %d); reconnecting", daemon.uri, reason
                )
                self._close_in_background(conn, daemon.take_callbacks(conn))
                _notify(self._on_disconnected, daemon.uri, "disconnect")

        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(closed, None)

    def _drop_connection(self, daemon: Daemon) -> Worker | None:
        """Forget the daemon's connection and let go of it on a worker of its own (returned)."""
        with daemon.lock:
            conn, daemon.conn = daemon.conn, None
        if conn is None:
            return None
        return self._close_in_background(conn, daemon.take_callbacks(conn))

    @staticmethod
    def _close_in_background(conn: Any, callbacks: list[int]) -> Worker:
        # Deregistering and closing are RPCs, and so is the close libvirt-python's __del__ does
        # when the last reference goes: on a hung daemon each blocks forever. Whoever drops a
        # connection (the watch thread, on a VMI deletion) must not be that thread, so a throwaway
        # worker owns the connection until it is closed.
        return run_once("libvirt-close", lambda: close_connection(conn, callbacks))


def _notify(callbacks: list[Callable[[str], None]], uri: str, what: str) -> None:
    """Tell listeners about ``uri``; a failing listener is logged, never propagated into libvirt."""
    for callback in callbacks:
        try:
            callback(uri)
        except Exception:
            log.exception("%s callback for %s failed", what, uri)
