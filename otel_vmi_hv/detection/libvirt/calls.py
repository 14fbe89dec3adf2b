"""Read-only libvirt calls that can never block the agent.

A SIGSTOP'd or wedged daemon makes ``open()`` and ``XMLDesc()`` hang forever (the kernel still
accepts on the socket backlog), and keepalive cannot protect ``open()``. So every call runs on a
helper thread and the caller waits at most ``timeout``; a call that overruns keeps its thread but
counts against a small per-daemon cap, and while a daemon is at its cap new work for it fails at
once as ``busy`` instead of piling up threads (KubeVirt's per-launcher virtqemud serves only five
client requests anyway). When the stuck call finally returns, the daemon is reported recovered so
the VMIs that were left ``unknown`` get detected again without waiting for their backoff.

This module only runs calls and keeps connections; what is asked (a domain's XML, the list of
domains) belongs to ``domain_detector.py`` and ``sources/libvirt.py``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.detection.libvirt.socket_paths import SocketPathShortener

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSE_TIMEOUT = 1.0  # how long close() waits for the connections to be let go of
STOP_DELAY_MS = 50  # the event loop's last turns, for the idle callbacks closes left behind
MAX_INFLIGHT_PER_DAEMON = 2
MAX_INFLIGHT_TOTAL = 64
RECONNECT_BACKOFF = Backoff(initial=0.5, maximum=30.0)
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3

# Error codes that mean "the daemon or the connection is gone", not "this domain is odd".
_CONNECTION_ERRORS = frozenset(
    {
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
        libvirt.VIR_ERR_AUTH_CANCELLED,
    }
)


class LibvirtUnavailable(Exception):
    """A call could not be made or did not finish; ``reason`` is the self-metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def silence_libvirt_stderr() -> None:
    """libvirt prints every error to stderr by default; the agent logs what matters itself."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class EventLoop:
    """libvirt's default event loop on a thread of its own, for as long as an agent uses it.

    It drives keepalive (which ends calls blocked on a daemon that stopped answering), close
    callbacks and domain lifecycle events, and it calls into Python for the last two. So it must
    not outlive its agent: an interpreter shutting down while this thread still runs libvirt (and
    may call back into Python) is a race the process can lose. ``acquire`` starts it for an agent,
    ``release`` by the last agent ends it and waits for it. libvirt allows one event implementation
    per process, registered once; the thread can be started again after a stop.
    """

    _registered = False
    _users = 0
    _thread: threading.Thread | None = None
    _stopping = False  # no new work for the loop: it ends when its stop timer fires
    _stop_due = False  # the stop timer fired
    _guard = threading.Lock()

    @classmethod
    def acquire(cls) -> None:
        with cls._guard:
            cls._users += 1
            if cls._thread is not None:
                return
            if not cls._registered:
                libvirt.virEventRegisterDefaultImpl()
                cls._registered = True
            cls._stopping = cls._stop_due = False
            cls._thread = threading.Thread(target=cls._run, name="libvirt-events", daemon=True)
            cls._thread.start()

    @classmethod
    def release(cls, timeout: float = 1.0) -> bool:
        """One user fewer; the last one stops the loop. False when it did not end within ``timeout``."""
        with cls._guard:
            cls._users = max(0, cls._users - 1)
            thread = cls._thread
            if cls._users or thread is None:
                return True
            cls._stopping = True
        # The loop ends when this timer fires, not at once: libvirt frees a closed connection
        # (its socket among the rest) in idle callbacks on this loop, each one scheduling the
        # next, and the loop runs idle callbacks only while no timer is due.
        libvirt.virEventAddTimeout(STOP_DELAY_MS, cls._stop_timer, None)
        thread.join(timeout)
        with cls._guard:
            if thread.is_alive():
                log.warning("libvirt's event loop did not stop within %.1fs", timeout)
                return False
            if cls._thread is thread:
                cls._thread = None
        return True

    @classmethod
    def running(cls) -> bool:
        with cls._guard:
            return cls._thread is not None and not cls._stopping

    @classmethod
    def _stop_timer(cls, timer: int, _opaque: object) -> None:
        libvirt.virEventRemoveTimeout(timer)
        with cls._guard:
            cls._stop_due = True

    @classmethod
    def _run(cls) -> None:
        while True:
            try:
                libvirt.virEventRunDefaultImpl()
            except libvirt.libvirtError:
                log.exception("libvirt event loop iteration failed")
                time.sleep(0.1)
            with cls._guard:
                if cls._stop_due:
                    cls._stopping = cls._stop_due = False
                    return


class _WorkerPool:
    """Long-lived threads for libvirt calls, grown on demand and trimmed when idle.

    A thread per call would be simplest, but libvirt keeps per-thread state that is not fully
    released when a thread exits (~240 bytes each, measured): under churn that is a leak. The pool
    never makes a caller wait: with no idle worker a new one starts, so a stuck call only ever
    holds its own thread. The callers' in-flight caps bound how many exist.
    """

    IDLE_EXIT = 300.0

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._tasks.put(task)
        if spawn:
            threading.Thread(target=self._work, name=self._name, daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=self.IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:
                        self._idle -= 1
                        return
                continue  # a task was promised to this worker: wait for it
            try:
                task()
            except Exception:
                log.exception("libvirt worker task failed")
            with self._lock:
                self._idle += 1


class _Call:
    """One bounded libvirt call, shared between the waiting caller and its helper thread."""

    __slots__ = ("done", "error", "finished", "overran", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = False
        self.overran = False


class _Daemon:
    """One libvirt URI: its connection, in-flight calls and reconnect backoff."""

    def __init__(self, uri: str, max_inflight: int) -> None:
        self.uri = uri
        self.lock = threading.Lock()
        self.conn: Any = None
        self.slots = threading.BoundedSemaphore(max_inflight)
        self.stuck_calls = 0  # calls that overran the timeout and have not come back yet
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.last_reason = "unreachable"
        self.generation = 0  # connections stored so far
        # Domain event callbacks registered on a connection, by connection: deregistered before it
        # is closed (a connection with callbacks stays open, and they call into Python).
        self.event_callbacks: list[tuple[Any, int]] = []

    @property
    def state(self) -> str:
        if self.stuck_calls:
            return "hung"
        if self.conn is not None:
            return "connected"
        return "disconnected" if self.failures else "idle"


class LibvirtCalls:
    """Bounded read-only calls to libvirt daemons, one reused connection per URI."""

    def __init__(
        self,
        timeout: float,
        *,
        keep_connections: bool = True,
        max_inflight_per_daemon: int = MAX_INFLIGHT_PER_DAEMON,
        max_inflight_total: int = MAX_INFLIGHT_TOTAL,
        open_read_only: Callable[[str], Any] = libvirt.openReadOnly,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self._max_per_daemon = max_inflight_per_daemon
        self._max_total = max_inflight_total
        # One daemon serving every domain (standalone): keep its connection. One daemon per VMI
        # (KubeVirt launchers), asked once per domain lifetime: an open connection per running
        # VMI would cost ~25 KB and a socket each for nothing, so close it after each call, and
        # forget a launcher's daemon once it answered.
        self._keep_connections = keep_connections
        self._open = open_read_only
        self._clock = clock
        self._sockets = SocketPathShortener()
        self._workers = _WorkerPool("libvirt-call")
        self._daemons: dict[str, _Daemon] = {}
        self._lock = threading.Lock()
        self._inflight_total = 0
        self._on_recovered: list[Callable[[str], None]] = []
        self._on_disconnected: list[Callable[[str], None]] = []
        self.calls_made = 0  # calls that reached libvirt (benchmarks and tests), under _lock

    # ------------------------------------------------------------------ public operations

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
        """State of every known daemon: idle, connected, disconnected or hung."""
        with self._lock:
            daemons = list(self._daemons.values())
        return {d.uri: d.state for d in daemons}

    def forget(self, uri: str) -> None:
        """Close and drop the connection of a daemon no VMI needs any more (launcher gone)."""
        with self._lock:
            daemon = self._daemons.pop(uri, None)
        if daemon is not None:
            self._drop_connection(daemon)
        self._sockets.release(uri)

    def register_events(self, uri: str, register: Callable[[Any], int]) -> None:
        """``register(connection)`` adds a domain event callback and returns its id (raises
        LibvirtUnavailable). The id stays with the connection, which deregisters it before closing.
        """

        def op(conn: Any) -> None:
            callback_id = register(conn)
            daemon = self._daemon(uri)
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
            daemons = list(self._daemons.values())
            self._daemons.clear()
        deadline = self._clock() + timeout
        closing = [thread for daemon in daemons if (thread := self._drop_connection(daemon)) is not None]
        for thread in closing:
            thread.join(max(0.0, deadline - self._clock()))
        self._sockets.close()
        stuck = sum(thread.is_alive() for thread in closing)
        if stuck:
            log.warning("%d libvirt connection(s) not closed within %.1fs (hung daemon)", stuck, timeout)
        return not stuck

    # ------------------------------------------------------------------ internals

    def _changed(self) -> None:
        """What ``states()`` returns changed; /metrics reads it at scrape time."""

    def _drop_if_settled(self, uri: str) -> None:
        """Forget a per-launcher daemon that answered and has nothing in flight: no state to keep."""
        with self._lock:
            daemon = self._daemons.get(uri)
            if daemon is None:
                return
            with daemon.lock:
                if daemon.conn is not None or daemon.stuck_calls or daemon.failures:
                    return
                del self._daemons[uri]
        self._changed()

    def _daemon(self, uri: str) -> _Daemon:
        with self._lock:
            daemon = self._daemons.get(uri)
            if daemon is None:
                daemon = self._daemons[uri] = _Daemon(uri, self._max_per_daemon)
                self._changed()
            return daemon

    def _call(self, uri: str, op: Callable[[Any], T]) -> T:
        daemon = self._daemon(uri)
        deadline = self._clock() + self.timeout
        self._admit(daemon, deadline)
        call = _Call()
        try:
            self._workers.submit(lambda: self._run_call(daemon, op, call))
        except RuntimeError as error:  # "can't start new thread": out of threads or pids
            self._release(daemon)
            raise LibvirtUnavailable("busy", f"cannot start a libvirt worker: {error}") from None
        self._await(daemon, call, deadline)
        if call.error is not None:
            if isinstance(call.error, LibvirtUnavailable):
                raise call.error
            raise LibvirtUnavailable("internal_error", repr(call.error)) from call.error
        value: T = call.value
        return value

    def _admit(self, daemon: _Daemon, deadline: float) -> None:
        """Take a slot for one call, or say at once why the daemon cannot take one more."""
        with daemon.lock:
            if daemon.conn is None and self._clock() < daemon.retry_at:
                raise LibvirtUnavailable(daemon.last_reason, daemon.last_error)
            if daemon.stuck_calls:
                # A call already overran: the daemon is hung, and another call would only hang
                # beside it. One stuck thread per daemon; its return is what signals recovery.
                raise LibvirtUnavailable(
                    "busy", f"a call to {daemon.uri} has not returned after {self.timeout:g}s"
                )
        if not daemon.slots.acquire(timeout=max(0.0, deadline - self._clock())):
            raise LibvirtUnavailable(
                "busy", f"no free connection slot for {daemon.uri} within {self.timeout:g}s"
            )
        with self._lock:
            if self._inflight_total >= self._max_total:
                daemon.slots.release()
                raise LibvirtUnavailable("busy", "too many libvirt calls still running")
            self._inflight_total += 1

    def _release(self, daemon: _Daemon) -> None:
        daemon.slots.release()
        with self._lock:
            self._inflight_total -= 1

    def _run_call(self, daemon: _Daemon, op: Callable[[Any], Any], call: _Call) -> None:
        """On a worker thread: the call itself; a call that overran and returns clean means recovery."""
        try:
            call.value = self._with_connection(daemon, op)
        except BaseException as error:
            call.error = error
        finally:
            recovered = False
            with daemon.lock:
                call.finished = True
                if call.overran:
                    daemon.stuck_calls -= 1
                    recovered = daemon.stuck_calls == 0 and call.error is None
                self._changed()
            self._release(daemon)
            call.done.set()
            if recovered:
                log.info("libvirt at %s answers again", daemon.uri)
                self._notify_recovered(daemon.uri)

    def _await(self, daemon: _Daemon, call: _Call, deadline: float) -> None:
        """Wait for the call until the deadline; past it the call is counted as stuck and left running."""
        if call.done.wait(max(0.0, deadline - self._clock())):
            return
        with daemon.lock:
            if not call.finished:
                call.overran = True
                daemon.stuck_calls += 1
                self._changed()
                first = daemon.stuck_calls == 1
            else:
                first = False
        if call.overran:
            if first:
                log.warning(
                    "libvirt at %s did not answer within %.3gs; treating it as hung", daemon.uri, self.timeout
                )
            raise LibvirtUnavailable("timeout", f"no answer from {daemon.uri} within {self.timeout:g}s")
        call.done.wait()  # it finished just as the deadline passed: its answer is here

    def _with_connection(self, daemon: _Daemon, op: Callable[[Any], T]) -> T:
        conn = daemon.conn
        fresh = False
        if conn is None:
            try:
                conn = self._open(self._sockets.shorten(daemon.uri))
            except (libvirt.libvirtError, OSError) as error:
                self._connect_failed(daemon, error)
                detail = self._sockets.explain(describe(error))
                raise LibvirtUnavailable(connect_reason(error), detail) from None
            if conn is None:  # old bindings return None instead of raising
                raise LibvirtUnavailable("unreachable", f"cannot open {daemon.uri}")
            fresh = True
            _enable_keepalive(conn)
            if self._keep_connections:
                self._watch_close(daemon, conn)
        with self._lock:
            self.calls_made += 1
        try:
            result = op(conn)
        except libvirt.libvirtError as error:
            code = error.get_error_code()
            if code == libvirt.VIR_ERR_NO_DOMAIN:
                self._keep(daemon, conn, fresh)
                raise LibvirtUnavailable("no_domain", describe(error)) from None
            if code in _CONNECTION_ERRORS or not _alive(conn):
                _release(conn, self._take_callbacks(daemon, conn))  # dead: every RPC fails at once
                with daemon.lock:
                    if daemon.conn is conn:
                        daemon.conn = None
                self._connect_failed(daemon, error)
                raise LibvirtUnavailable("unreachable", describe(error)) from None
            self._keep(daemon, conn, fresh)
            raise LibvirtUnavailable("libvirt_error", describe(error)) from None
        self._keep(daemon, conn, fresh)
        return result

    def _watch_close(self, daemon: _Daemon, conn: Any) -> None:
        """Learn at once when a kept connection dies (daemon killed or restarted), not at the next call.

        libvirt reports it on the event-loop thread; the connection is dropped and listeners are
        told, so the standalone source re-lists (and reconnects) instead of waiting for its resync.
        """
        if not EventLoop.running():
            return

        def closed(_conn: Any, reason: int, _opaque: object) -> None:
            with daemon.lock:
                current = daemon.conn is conn
                if current:
                    daemon.conn = None
                    daemon.failures += 1
                    daemon.retry_at = 0.0  # reconnect on the next call; the backoff starts if that fails
                    self._changed()
            if current:
                log.warning(
                    "connection to libvirt at %s closed (reason %d); reconnecting", daemon.uri, reason
                )
                self._release_in_background(conn, self._take_callbacks(daemon, conn))
                self._notify_disconnected(daemon.uri)

        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(closed, None)

    def _keep(self, daemon: _Daemon, conn: Any, fresh: bool) -> None:
        if not fresh:
            return
        was_failing = False
        with daemon.lock:
            if not self._keep_connections:
                was_failing = daemon.failures > 0
                daemon.failures = 0
                daemon.retry_at = 0.0
            elif daemon.conn is None:
                daemon.conn = conn
                daemon.generation += 1
                was_failing = daemon.failures > 0
                daemon.failures = 0
                daemon.retry_at = 0.0
                conn = None
            self._changed()
        if conn is not None:  # not kept, or another call connected first: one connection per URI
            _release(conn, [])
        if was_failing:
            log.info("reconnected to libvirt at %s", daemon.uri)
            self._notify_recovered(daemon.uri)

    def _connect_failed(self, daemon: _Daemon, error: Exception) -> None:
        with daemon.lock:
            daemon.failures += 1
            delay = RECONNECT_BACKOFF.delay(daemon.failures)
            daemon.retry_at = self._clock() + delay
            daemon.last_error = self._sockets.explain(describe(error))
            daemon.last_reason = connect_reason(error)
            first = daemon.failures == 1
            self._changed()
        if first:
            # With one daemon per launcher, the VMI's own "unknown" warning already says this.
            (log.warning if self._keep_connections else log.debug)(
                "libvirt at %s is unreachable: %s", daemon.uri, daemon.last_error
            )

    def _drop_connection(self, daemon: _Daemon) -> threading.Thread | None:
        """Forget the daemon's connection and let go of it on a thread of its own (returned)."""
        with daemon.lock:
            conn, daemon.conn = daemon.conn, None
            self._changed()
        if conn is None:
            return None
        callbacks = self._take_callbacks(daemon, conn)
        return self._release_in_background(conn, callbacks)

    @staticmethod
    def _take_callbacks(daemon: _Daemon, conn: Any) -> list[int]:
        with daemon.lock:
            mine = [callback for owner, callback in daemon.event_callbacks if owner is conn]
            daemon.event_callbacks = [(o, c) for o, c in daemon.event_callbacks if o is not conn]
        return mine

    @staticmethod
    def _release_in_background(conn: Any, callbacks: list[int]) -> threading.Thread:
        # Deregistering and closing are RPCs, and so is the close libvirt-python's __del__ does
        # when the last reference goes: on a hung daemon each blocks forever. Whoever drops a
        # connection (the watch thread, on a VMI deletion) must not be that thread, so a throwaway
        # thread owns the connection until it is closed.
        thread = threading.Thread(target=_release, args=(conn, callbacks), name="libvirt-close", daemon=True)
        thread.start()
        return thread

    def _notify_recovered(self, uri: str) -> None:
        _notify(self._on_recovered, uri, "recovery")

    def _notify_disconnected(self, uri: str) -> None:
        _notify(self._on_disconnected, uri, "disconnect")


def _notify(callbacks: list[Callable[[str], None]], uri: str, what: str) -> None:
    """Tell listeners about ``uri``; a failing listener is logged, never propagated into libvirt."""
    for callback in callbacks:
        try:
            callback(uri)
        except Exception:
            log.exception("%s callback for %s failed", what, uri)


def _enable_keepalive(conn: Any) -> None:
    if not EventLoop.running():
        return
    # Local drivers (test:///) have no keepalive, and nothing to protect there.
    with contextlib.suppress(libvirt.libvirtError):
        conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)


def _alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


def _release(conn: Any, callbacks: list[int]) -> None:
    """Let go of a connection for good: its event and close callbacks first, then the connection.

    libvirt keeps a connection with registered domain event callbacks open whatever close() says
    (each registration holds a reference), and a registered close callback is called from inside
    libvirt; only without both does close() end the connection and every call into Python with it.
    """
    for callback in callbacks:
        with contextlib.suppress(libvirt.libvirtError):
            conn.domainEventDeregisterAny(callback)
    with contextlib.suppress(libvirt.libvirtError):
        conn.unregisterCloseCallback()
    _close_quietly(conn)


def connect_reason(error: Exception) -> str:
    """Why a connection could not be opened, as a bounded label: the operator's fix differs.

    no_socket: nothing at the socket path (pods root not mounted, launcher gone);
    permission_denied: the agent lacks the rights to the socket (not root, or no DAC_OVERRIDE);
    unreachable: anything else (daemon down, refused). Read from libvirt's error code and the
    errno it carries (int1 of a system error), never from the message, which libvirt translates.
    """
    if isinstance(error, libvirt.libvirtError):
        number = error.get_int1() if error.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR else None
    else:
        number = getattr(error, "errno", None)
    if number in (errno.EACCES, errno.EPERM):
        return "permission_denied"
    if number in (errno.ENOENT, errno.ENOTDIR):
        return "no_socket"
    return "unreachable"


def describe(error: Exception) -> str:
    if not isinstance(error, libvirt.libvirtError):
        return str(error)
    message = error.get_error_message() or str(error)
    return f"{message} (code {error.get_error_code()})"
