"""Calls that may never return, run on reused workers and waited for until a deadline only.

A worker per call would be simplest, but libvirt keeps per-thread state that is not fully released
when a thread exits: under churn that is a leak. So calls run on long-lived workers, started on
demand and ended when idle. The pool never makes a caller wait: with no idle worker a new one
starts, so a call stuck in a hung daemon holds only its own worker, abandoned until the call
returns (the callers' in-flight caps bound how many exist). ``concurrent.futures`` cannot do this:
its threads cannot be abandoned, and its shutdown waits for them.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from otel_vmi_hv.worker import Worker

log = logging.getLogger(__name__)

T = TypeVar("T")

IDLE_EXIT = 300.0  # seconds a worker waits for work before it ends


class Abandoned(Exception):
    """The caller stopped waiting for a call, which goes on alone."""


class CallPool:
    """Workers named ``name`` that run submitted tasks; as many as there are tasks at once."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, task: Callable[[], None]) -> None:
        """Run ``task`` on an idle worker or a new one; RuntimeError when none can be started."""
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1  # that worker is promised this task
        if start:
            Worker(self._name, self._work).start()  # before the task is queued: a failure leaves none
        self._tasks.put(task)

    def _work(self, _worker: Worker) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:
                        self._idle -= 1
                        return
                continue  # a task was promised to this worker: wait for it
            try:
                task()
            except Exception:
                log.exception("%s: task failed", self._name)
            with self._lock:
                self._idle += 1


class Call(Generic[T]):
    """``function`` run once on a worker; its caller waits for the answer until a deadline at most.

    A caller that gives up abandons the call; the call then finishes alone and ``returned_late``
    is told how it ended (None: it returned, else what it raised).
    """

    def __init__(self, function: Callable[[], T], returned_late: Callable[[Exception | None], None]) -> None:
        self._function = function
        self._returned_late = returned_late
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        self._value: T | None = None
        self._error: Exception | None = None

    def run(self) -> None:
        """On the worker."""
        try:
            self._value = self._function()
        except Exception as error:
            self._error = error
        with self._lock:
            self._done.set()
            late = self._abandoned
        if late:
            self._returned_late(self._error)

    def result(self, timeout: float, abandoning: Callable[[], None]) -> T:
        """The answer (or what the function raised) if it comes within ``timeout``. Else the call is
        abandoned: ``abandoning()`` runs, before ``returned_late`` can, and Abandoned is raised."""
        if not self._done.wait(max(0.0, timeout)):
            with self._lock:
                if not self._done.is_set():
                    self._abandoned = True
                    abandoning()
                    raise Abandoned
        if self._error is not None:
            raise self._error
        return cast(T, self._value)
