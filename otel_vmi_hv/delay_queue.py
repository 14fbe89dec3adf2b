"""A delaying work queue, like client-go's: keys become due after a delay, one key in flight at a time.

The tracker detects each VMI on a few workers: a key added again before it is due keeps the earlier
time, a key that becomes due while a worker still holds it runs again after ``done``, and a key
can be dropped whatever its state. The clock is injected so the timing rules are tested without
sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class DelayQueue(Generic[K]):
    """Keys due at a time; ``get`` hands out a due key that no other worker holds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ready = threading.Condition()
        self._heap: list[tuple[float, int, K]] = []
        self._queued: dict[K, float] = {}  # key → due time of its live heap item
        self._running: set[K] = set()
        self._deferred: set[K] = set()  # became due while running: due again at its ``done``
        self._seq = itertools.count()
        self._shut_down = False

    def add_after(self, key: K, delay: float) -> None:
        """Make ``key`` due after ``delay`` seconds, unless it is already due sooner."""
        with self._ready:
            due = self._clock() + delay
            if self._queued.get(key, math.inf) <= due:
                return
            self._queued[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._ready.notify_all()

    def discard(self, key: K) -> None:
        """Forget a queued key (a running one still ends with ``done``)."""
        with self._ready:
            self._queued.pop(key, None)
            self._deferred.discard(key)

    def pop_due(self) -> K | None:
        """A due key, now held by the caller until ``done``, or None."""
        with self._ready:  # a reentrant lock: ``get`` calls this holding it
            now = self._clock()
            while self._heap:
                due, _, key = self._heap[0]
                if self._queued.get(key) != due:  # superseded or discarded
                    heapq.heappop(self._heap)
                elif due > now:
                    return None
                else:
                    heapq.heappop(self._heap)
                    del self._queued[key]
                    if key not in self._running:
                        self._running.add(key)
                        return key
                    self._deferred.add(key)
            return None

    def get(self) -> K | None:
        """Wait for a due key and hold it; None once shut down."""
        with self._ready:
            while not self._shut_down:
                key = self.pop_due()
                if key is not None:
                    return key
                self._ready.wait(max(self._heap[0][0] - self._clock(), 0.001) if self._heap else None)
            return None

    def done(self, key: K) -> None:
        """The holder of ``key`` finished; a key that became due meanwhile is due again now."""
        with self._ready:
            self._running.discard(key)
            if key in self._deferred:
                self._deferred.discard(key)
                self.add_after(key, 0.0)
            self._ready.notify_all()

    def idle(self) -> bool:
        """Nothing due and nothing held."""
        with self._ready:
            now = self._clock()
            return not self._running and all(due > now for due in self._queued.values())

    def wait_idle(self, timeout: float) -> bool:
        """Wait until ``idle``, at most ``timeout`` seconds; True when idle."""
        with self._ready:
            return self._ready.wait_for(self.idle, timeout)

    def shut_down(self) -> None:
        """Wake every ``get``, which returns None from now on."""
        with self._ready:
            self._shut_down = True
            self._ready.notify_all()
