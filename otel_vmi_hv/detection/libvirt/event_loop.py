"""libvirt's default event loop, on a worker of its own for as long as an agent uses it.

The loop drives keepalive (which ends calls blocked on a daemon that stopped answering), close
callbacks and domain lifecycle events, and it calls into Python for the last two. So it must not
outlive its agent: an interpreter shutting down while libvirt may still call back into Python is a
race the process can lose. libvirt allows one event implementation per process, registered once;
the loop can be started again after a stop.
"""

from __future__ import annotations

import logging
import threading

import libvirt

from otel_vmi_hv.worker import Worker

log = logging.getLogger(__name__)

STOP_DELAY_MS = 50  # the loop's last turns, for the idle callbacks closes left behind


def silence_libvirt_stderr() -> None:
    """libvirt prints every error to stderr by default; the agent logs what matters itself."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class EventLoop:
    """``acquire`` starts the loop for an agent; ``release`` by the last agent ends it and waits."""

    _registered = False
    _users = 0
    _worker: Worker | None = None
    _guard = threading.Lock()

    @classmethod
    def acquire(cls) -> None:
        with cls._guard:
            cls._users += 1
            if cls._worker is None:
                if not cls._registered:
                    libvirt.virEventRegisterDefaultImpl()
                    cls._registered = True
                cls._worker = Worker("libvirt-events", _run)
                cls._worker.start()

    @classmethod
    def release(cls, timeout: float = 1.0) -> bool:
        """One user fewer; the last one stops the loop. False when it did not end within ``timeout``."""
        with cls._guard:
            cls._users = max(0, cls._users - 1)
            worker = cls._worker
            if cls._users or worker is None:
                return True
        # The loop ends when this timer fires, not at once: libvirt frees a closed connection
        # (its socket among the rest) in idle callbacks on this loop, each one scheduling the
        # next, and the loop runs idle callbacks only while no timer is due.
        libvirt.virEventAddTimeout(STOP_DELAY_MS, _stop_timer, worker)
        if not worker.join(timeout):
            log.warning("libvirt's event loop did not stop within %.1fs", timeout)
            return False
        with cls._guard:
            if cls._worker is worker:
                cls._worker = None
        return True

    @classmethod
    def running(cls) -> bool:
        """True while an agent uses the loop: keepalive and callbacks registered now will be served."""
        with cls._guard:
            return cls._users > 0 and cls._worker is not None


def _stop_timer(timer: int, worker: Worker) -> None:
    libvirt.virEventRemoveTimeout(timer)
    worker.stop()


def _run(worker: Worker) -> None:
    while not worker.stopping:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:
            log.exception("libvirt event loop iteration failed")
            worker.sleep(0.1)
