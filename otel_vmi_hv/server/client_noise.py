"""What misbehaving HTTP clients cost in the log: at most a few debug lines a second, no traceback.

A client that resets mid-request, sends garbage or a corrupt TLS record is not the agent's fault;
logging each as an error with a traceback lets one hostile client flood the log (and the disk of
whatever collects it).
"""

from __future__ import annotations

import logging
import threading
import time

LINES_PER_SECOND = 5


class RateLimitedLog:
    """Debug lines about clients, at most ``per_second`` a second; the rest are counted and the
    count is reported with the next line that gets through."""

    def __init__(self, logger: logging.Logger, per_second: int = LINES_PER_SECOND) -> None:
        self._logger = logger
        self._per_second = per_second
        self._window = 0.0
        self._used = 0
        self._dropped = 0
        self._lock = threading.Lock()

    def debug(self, message: str, *args: object) -> None:
        if not self._logger.isEnabledFor(logging.DEBUG):
            return
        now = time.monotonic()
        with self._lock:
            if now - self._window >= 1.0:
                self._window, self._used = now, 0
            if self._used >= self._per_second:
                self._dropped += 1
                return
            self._used += 1
            dropped, self._dropped = self._dropped, 0
        suffix = f" ({dropped} similar lines dropped)" if dropped else ""
        self._logger.debug(message + suffix, *args)
