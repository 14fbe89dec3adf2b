"""One libvirt daemon as the agent knows it: a circuit breaker around its connection.

A call that overran the timeout counts as stuck until it returns. While one is, new calls fail at
once as ``busy`` rather than pile up threads on a hung daemon (KubeVirt's per-launcher virtqemud
serves only five client requests anyway), and its return is what says the daemon recovered. A
daemon that could not be opened is not asked again before its backoff delay.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.model import ConnectionState, FailureReason

log = logging.getLogger(__name__)

MAX_INFLIGHT = 2  # calls at once per daemon
RECONNECT_BACKOFF = Backoff(initial=0.5, maximum=30.0)


class LibvirtUnavailable(Exception):
    """A call could not be made or did not finish; ``reason`` is the self-metric label."""

    def __init__(self, reason: FailureReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Daemon:
    """One libvirt URI: its connection, calls in flight and stuck, and when it may be tried again."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.lock = threading.Lock()
        self.conn: Any = None
        self.generation = 0  # connections kept so far
        self.slots = threading.BoundedSemaphore(MAX_INFLIGHT)
        self.stuck_calls = 0  # calls that overran the timeout and have not returned yet
        self.failures = 0
        self.retry_at = 0.0
        self.last_failure = LibvirtUnavailable(FailureReason.UNREACHABLE)
        # Domain event callbacks registered on a connection, by connection: deregistered before it
        # is closed (a connection with callbacks stays open, and they call into Python).
        self.event_callbacks: list[tuple[Any, int]] = []

    @property
    def state(self) -> ConnectionState:
        if self.stuck_calls:
            return ConnectionState.HUNG
        if self.conn is not None:
            return ConnectionState.CONNECTED
        return ConnectionState.DISCONNECTED if self.failures else ConnectionState.IDLE

    def admit(self, now: float, deadline: float, timeout: float) -> None:
        """Take a slot for one call (``now`` on the backoff clock), or say at once why not."""
        with self.lock:
            if self.conn is None and now < self.retry_at:
                raise LibvirtUnavailable(self.last_failure.reason, self.last_failure.detail)
            if self.stuck_calls:
                # Another call would only hang beside the stuck one, whose return signals recovery.
                why = f"a call to {self.uri} has not returned after {timeout:g}s"
                raise LibvirtUnavailable(FailureReason.BUSY, why)
        if not self.slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            why = f"no free connection slot for {self.uri} within {timeout:g}s"
            raise LibvirtUnavailable(FailureReason.BUSY, why)

    def overran(self, timeout: float) -> None:
        """A call is left running past its deadline: the daemon is hung until it returns."""
        with self.lock:
            self.stuck_calls += 1
            if self.stuck_calls == 1:
                log.warning(
                    "libvirt at %s did not answer within %.3gs; treating it as hung", self.uri, timeout
                )

    def returned_late(self, error: Exception | None) -> bool:
        """A stuck call came back; True when it recovered: none is stuck any more, and it did not fail."""
        with self.lock:
            self.stuck_calls -= 1
            recovered = self.stuck_calls == 0 and error is None
        if recovered:
            log.info("libvirt at %s answers again", self.uri)
        return recovered

    def open_failed(self, failure: LibvirtUnavailable, now: float) -> bool:
        """Back off before the next try; True on the first failure in a row."""
        with self.lock:
            self.failures += 1
            self.retry_at = now + RECONNECT_BACKOFF.delay(self.failures)
            self.last_failure = failure
            return self.failures == 1

    def answered(self, conn: Any, keep: bool) -> tuple[bool, Any]:
        """A fresh connection answered: (was failing, the connection when it is not kept)."""
        with self.lock:
            if keep and self.conn is not None:
                return False, conn  # another call connected first: one connection per URI
            was_failing, self.failures, self.retry_at = self.failures > 0, 0, 0.0
            if keep:
                self.conn, self.generation = conn, self.generation + 1
        return was_failing, None if keep else conn

    def lost(self, conn: Any, *, reconnect_now: bool = False) -> bool:
        """``conn`` died; True when it was the kept one (then it is dropped). ``reconnect_now``:
        the next call reconnects at once, and the backoff starts if that fails."""
        with self.lock:
            if self.conn is not conn:
                return False
            self.conn = None
            if reconnect_now:
                self.failures, self.retry_at = self.failures + 1, 0.0
            return True

    def take_callbacks(self, conn: Any) -> list[int]:
        with self.lock:
            mine = [callback for owner, callback in self.event_callbacks if owner is conn]
            self.event_callbacks = [(o, c) for o, c in self.event_callbacks if o is not conn]
        return mine
