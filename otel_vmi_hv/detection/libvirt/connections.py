"""Opening, reusing and letting go of read-only libvirt connections.

A kept connection (standalone: one daemon serves every domain) is watched: libvirt reports its
close on the event loop, and listeners re-list at once instead of at the next resync. Letting go
of a connection takes RPCs (deregistering its callbacks, closing it) that block forever on a hung
daemon, so whoever drops one hands it to a throwaway worker. Failure reasons come from libvirt's
error code and errno, never from its messages, which libvirt translates.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from otel_vmi_hv.detection.libvirt.daemons import Daemon, LibvirtUnavailable
from otel_vmi_hv.detection.libvirt.event_loop import EventLoop
from otel_vmi_hv.detection.libvirt.socket_paths import SocketPathShortener
from otel_vmi_hv.model import FailureReason
from otel_vmi_hv.worker import Worker, run_once

log = logging.getLogger(__name__)

T = TypeVar("T")

KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3

# Error codes that mean "the daemon or the connection is gone", not "this domain is odd".
CONNECTION_ERRORS = frozenset({
    libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    libvirt.VIR_ERR_AUTH_CANCELLED,
})  # fmt: skip
# What a failed open's errno means for the operator (see connect_reason).
_ERRNO_REASONS: dict[int | None, FailureReason] = {
    errno.EACCES: FailureReason.PERMISSION_DENIED,
    errno.EPERM: FailureReason.PERMISSION_DENIED,
    errno.ENOENT: FailureReason.NO_SOCKET,
    errno.ENOTDIR: FailureReason.NO_SOCKET,
}


class Connections:
    """Each daemon's connection: opened on demand, kept when ``keep`` (else closed after a call).

    ``recovered`` and ``disconnected`` hold the listeners to tell, by URI.
    """

    def __init__(self, open_read_only: Callable[[str], Any], clock: Callable[[], float], keep: bool) -> None:
        self.keep = keep
        self.sockets = SocketPathShortener()
        self.recovered: list[Callable[[str], None]] = []
        self.disconnected: list[Callable[[str], None]] = []
        self._open = open_read_only
        self._clock = clock

    def run(self, daemon: Daemon, op: Callable[[Any], T]) -> T:
        """``op`` on the daemon's kept connection or a new one; what fails raises LibvirtUnavailable."""
        conn = daemon.conn
        fresh = conn is None
        if fresh:
            conn = self._connect(daemon)
        try:
            result = op(conn)
        except libvirt.libvirtError as error:
            code = error.get_error_code()
            if code != libvirt.VIR_ERR_NO_DOMAIN and (code in CONNECTION_ERRORS or not _alive(conn)):
                close_connection(conn, daemon.take_callbacks(conn))  # dead: every RPC fails at once
                daemon.lost(conn)
                self._open_failed(daemon, error)
                raise LibvirtUnavailable(FailureReason.UNREACHABLE, describe(error)) from None
            if fresh:
                self._answered(daemon, conn)
            no_domain = code == libvirt.VIR_ERR_NO_DOMAIN
            reason = FailureReason.NO_DOMAIN if no_domain else FailureReason.LIBVIRT_ERROR
            raise LibvirtUnavailable(reason, describe(error)) from None
        if fresh:
            self._answered(daemon, conn)
        return result

    def _connect(self, daemon: Daemon) -> Any:
        try:
            conn = self._open(self.sockets.shorten(daemon.uri))
        except (libvirt.libvirtError, OSError) as error:
            raise self._open_failed(daemon, error) from None
        if EventLoop.running():
            with contextlib.suppress(libvirt.libvirtError):  # local drivers (test:///) have none
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            if self.keep:
                self._watch_close(daemon, conn)
        return conn

    def _open_failed(self, daemon: Daemon, error: Exception) -> LibvirtUnavailable:
        failure = LibvirtUnavailable(connect_reason(error), self.sockets.explain(describe(error)))
        if daemon.open_failed(failure, self._clock()):
            # With one daemon per launcher, the VMI's own "unknown" warning already says this.
            (log.warning if self.keep else log.debug)(
                "libvirt at %s is unreachable: %s", daemon.uri, failure.detail
            )
        return failure

    def _answered(self, daemon: Daemon, conn: Any) -> None:
        was_failing, spare = daemon.answered(conn, self.keep)
        if spare is not None:
            close_connection(spare, [])
        if was_failing:
            log.info("reconnected to libvirt at %s", daemon.uri)
            notify(self.recovered, daemon.uri, "recovery")

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
                notify(self.disconnected, daemon.uri, "disconnect")

        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(closed, None)

    def drop(self, daemon: Daemon) -> Worker | None:
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


def close_connection(conn: Any, callbacks: list[int]) -> None:
    """Let go of a connection for good: its event and close callbacks first, then the connection.

    libvirt keeps a connection with registered domain event callbacks open whatever close() says
    (each registration holds a reference), and a registered close callback is called from inside
    libvirt; only without both does close() end the connection and every call into Python with it.
    """
    steps = [lambda c=callback: conn.domainEventDeregisterAny(c) for callback in callbacks]
    for step in [*steps, conn.unregisterCloseCallback, conn.close]:
        with contextlib.suppress(libvirt.libvirtError):
            step()


def _alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def notify(callbacks: list[Callable[[str], None]], uri: str, what: str) -> None:
    """Tell listeners about ``uri``; a failing listener is logged, never propagated into libvirt."""
    for callback in callbacks:
        try:
            callback(uri)
        except Exception:
            log.exception("%s callback for %s failed", what, uri)


def connect_reason(error: Exception) -> FailureReason:
    """Why a connection could not be opened: the operator's fix differs.

    no_socket: nothing at the socket path (pods root not mounted, launcher gone);
    permission_denied: the agent lacks the rights to the socket (not root, or no DAC_OVERRIDE);
    unreachable: anything else (daemon down, refused). errno is int1 of a system error.
    """
    if isinstance(error, libvirt.libvirtError):
        number = error.get_int1() if error.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR else None
    else:
        number = getattr(error, "errno", None)
    return _ERRNO_REASONS.get(number, FailureReason.UNREACHABLE)


def describe(error: Exception) -> str:
    if not isinstance(error, libvirt.libvirtError):
        return str(error)
    message = error.get_error_message() or str(error)
    return f"{message} (code {error.get_error_code()})"
