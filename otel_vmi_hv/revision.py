"""One counter of changes to anything /metrics shows.

/metrics serves the last rendered body again while nothing changed; that is only safe if every
input of the body moves one counter. So every holder of exported state (the tracker's VMI table,
the libvirt connection states, the self-metrics, the OTLP export status, the cluster facts) bumps
this one object after each change, and the renderer compares a single number.
"""

from __future__ import annotations

import threading


class Revision:
    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        return self._value

    def bump(self) -> None:
        """Call after the change is visible to readers, never before."""
        with self._lock:
            self._value += 1
