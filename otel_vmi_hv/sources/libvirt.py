"""Standalone source: the active domains of one libvirt daemon are the VMIs.

Used on a plain libvirt host (and for the demo). Domain lifecycle events make changes visible at
once; a periodic re-listing catches anything an event could have missed (a daemon restart drops
the registration). While the daemon is unreachable the last known list is kept: the QEMU
processes outlive their daemon, so dropping them would report VMs as gone that are still running.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.detection.libvirt.calls import EventLoop, LibvirtCalls, LibvirtUnavailable
from otel_vmi_hv.interfaces import Recorder, Sink
from otel_vmi_hv.model import VMI, LibvirtTarget

log = logging.getLogger(__name__)

# KubeVirt names domains "<namespace>_<name>"; neither part may contain "_" (DNS label and
# DNS subdomain rules), so a single "_" between two such parts is unambiguous.
_KUBEVIRT_DOMAIN = re.compile(r"([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)_([a-z0-9](?:[-.a-z0-9]*[a-z0-9])?)")


@dataclass(frozen=True, slots=True)
class ActiveDomain:
    name: str
    uuid: str
    id: int


def list_active_domains(calls: LibvirtCalls, uri: str) -> list[ActiveDomain]:
    """Active domains of ``uri``; raises LibvirtUnavailable."""

    def op(conn: Any) -> list[ActiveDomain]:
        domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        return [ActiveDomain(d.name(), d.UUIDString(), d.ID()) for d in domains]

    return calls.call(uri, op)


def register_lifecycle_events(calls: LibvirtCalls, uri: str, callback: Callable[[], None]) -> None:
    """Call ``callback`` (on the event-loop thread) whenever a domain of ``uri`` changes state.

    Registration belongs to the connection, so the source repeats it after every reconnect; the
    connection deregisters it before it is closed.
    """
    if not EventLoop.running():
        return

    def register(conn: Any) -> int:
        callback_id: int = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lambda *_: callback(), None
        )
        return callback_id

    calls.register_events(uri, register)


def labels_for_domain(domain_name: str) -> tuple[str, str]:
    """(namespace, name) for a domain: KubeVirt's convention, else ("", the domain name)."""
    match = _KUBEVIRT_DOMAIN.fullmatch(domain_name)
    if match and len(match.group(1)) <= 63 and len(match.group(2)) <= 253:
        return match.group(1), match.group(2)
    return "", domain_name


def vmi_for_domain(uri: str, domain: ActiveDomain) -> VMI:
    namespace, name = labels_for_domain(domain.name)
    # A restarted domain keeps its UUID but gets a new id: that is a new lifetime to detect.
    target = LibvirtTarget(uri=uri, domain_name=domain.name, lifetime_key=f"{domain.uuid}/{domain.id}")
    return VMI(key=domain.uuid, namespace=namespace, name=name, target=target)


class LibvirtDomainSource:
    def __init__(
        self,
        calls: LibvirtCalls,
        sink: Sink,
        uri: str,
        resync_interval: float,
        *,
        metrics: Recorder,
        on_synced: Callable[[], None],
    ) -> None:
        self._calls = calls
        self._sink = sink
        self._uri = uri
        self._resync = resync_interval
        self._metrics = metrics
        self._on_synced = on_synced
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._events_conn = 0
        self.last_error: str | None = None  # why the last listing failed, for `detect`
        # A killed or restarted daemon: re-list (and reconnect) now rather than at the next resync.
        calls.subscribe(recovered=self._daemon_changed, disconnected=self._daemon_changed)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="libvirt-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        """Re-list soon (a lifecycle event arrived)."""
        self._wake.set()

    def _daemon_changed(self, uri: str) -> None:
        if uri == self._uri:
            self._wake.set()

    def sync_once(self) -> None:
        """List the active domains and reconcile the tracker; raises LibvirtUnavailable."""
        domains = list_active_domains(self._calls, self._uri)
        self._sink.replace_all(vmi_for_domain(self._uri, domain) for domain in domains)
        self._metrics.record_relist()
        self._metrics.record_sync(time.time())
        connection = self._calls.connection_id(self._uri)
        if connection and connection != self._events_conn:
            try:
                register_lifecycle_events(self._calls, self._uri, self.poke)
                self._events_conn = connection
            except LibvirtUnavailable as failure:
                log.info("no lifecycle events from %s (%s); relying on re-listing", self._uri, failure)
                self._events_conn = connection

    def _loop(self) -> None:
        failures = 0
        synced = False
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.sync_once()
            except Exception as failure:  # the loop must outlive any one bad listing
                self.last_error = (
                    f"{failure.reason}: {failure.detail}"
                    if isinstance(failure, LibvirtUnavailable)
                    else repr(failure)
                )
                if not isinstance(failure, LibvirtUnavailable):
                    log.exception("listing domains of %s failed unexpectedly", self._uri)
                failures += 1
                if failures == 1:
                    log.warning(
                        "cannot list domains of %s (%s); keeping the last known list", self._uri, failure
                    )
                delay = Backoff(initial=0.5, maximum=self._resync).delay(failures)
            else:
                if failures:
                    log.info("listing domains of %s works again", self._uri)
                failures = 0
                delay = self._resync
                if not synced:
                    synced = True
                    self._on_synced()
            self._wake.wait(delay)
