"""The one way the agent runs work in the background.

Every loop (watches, probes, detection workers, lookups) is a ``Worker``: a named daemon thread
with a stop event, so start, stop and join mean the same everywhere, a loop's wait is cut short
by a stop, and a stop never waits past its deadline. A loop that raises is a bug: it is logged
with its traceback, never retried silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)


class Worker:
    """A named background thread running ``target(worker)`` until it returns."""

    def __init__(self, name: str, target: Callable[[Worker], object]) -> None:
        self.name = name
        self._target = target
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start (or start again after a stop); a running worker is left as it is."""
        if self.alive:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._target(self)
        except Exception:
            log.exception("%s: stopped by an unexpected error", self.name)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` or until asked to stop; True when asked to stop."""
        return self._stop.wait(max(0.0, seconds))

    def stop(self) -> None:
        """Ask the loop to end; does not wait (``join`` does)."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for the thread to end; True when it has."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(max(0.0, timeout))
        return not thread.is_alive()


def run_once(name: str, function: Callable[[], object]) -> Worker:
    """``function`` on a worker of its own, started: for a call that may hang (a close, a flush)."""
    worker = Worker(name, lambda _: function())
    worker.start()
    return worker


def stop_all(workers: Iterable[Worker], timeout: float) -> bool:
    """Stop every worker, then join them within one shared deadline; True when all ended."""
    workers = list(workers)
    for worker in workers:
        worker.stop()
    deadline = time.monotonic() + timeout
    return all([worker.join(deadline - time.monotonic()) for worker in workers])
