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
from typing import Any

import libvirt

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.detection.libvirt.calls import LibvirtCalls
from otel_vmi_hv.detection.libvirt.daemons import LibvirtUnavailable
from otel_vmi_hv.interfaces import Recorder, Sink
from otel_vmi_hv.model import VMI, LibvirtTarget
from otel_vmi_hv.worker import Worker

log = logging.getLogger(__name__)

# KubeVirt names domains "<namespace>_<name>"; neither part may contain "_" (DNS label and
# DNS subdomain rules), so a single "_" between two such parts is unambiguous.
_KUBEVIRT_DOMAIN = re.compile(r"([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)_([a-z0-9](?:[-.a-z0-9]*[a-z0-9])?)")


def vmi_for_domain(uri: str, name: str, uuid: str, domain_id: int) -> VMI:
    """KubeVirt's (namespace, name) in the domain name, else ("", the domain name)."""
    match = _KUBEVIRT_DOMAIN.fullmatch(name)
    if match and len(match.group(1)) <= 63 and len(match.group(2)) <= 253:
        namespace, vmi_name = match.groups()
    else:
        namespace, vmi_name = "", name
    # A restarted domain keeps its UUID but gets a new id: that is a new lifetime to detect.
    target = LibvirtTarget(uri=uri, domain_name=name, lifetime_key=f"{uuid}/{domain_id}")
    return VMI(key=uuid, namespace=namespace, name=vmi_name, target=target)


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
        self._worker = Worker("libvirt-source", self._loop)
        self._events_conn = 0  # the connection lifecycle events were registered on
        self.last_error: str | None = None  # why the last listing failed, for `detect`
        # A killed or restarted daemon: re-list (and reconnect) now rather than at the next resync.
        calls.subscribe(recovered=self._daemon_changed, disconnected=self._daemon_changed)

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        self._wake.set()

    def _daemon_changed(self, uri: str) -> None:
        if uri == self._uri:
            self._wake.set()

    def _sync(self) -> None:
        """List the active domains and reconcile the tracker; raises LibvirtUnavailable."""

        def active(conn: Any) -> list[VMI]:
            domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            return [vmi_for_domain(self._uri, d.name(), d.UUIDString(), d.ID()) for d in domains]

        self._sink.replace_all(self._calls.call(self._uri, active))
        self._metrics.record_relist()
        self._metrics.record_sync(time.time())
        connection = self._calls.connection_id(self._uri)
        if connection and connection != self._events_conn:
            self._events_conn = connection  # registered on each new connection, tried once
            try:
                self._calls.register_events(self._uri, self._register_lifecycle_events)
            except LibvirtUnavailable as failure:
                log.info("no lifecycle events from %s (%s); relying on re-listing", self._uri, failure)

    def _register_lifecycle_events(self, conn: Any) -> int:
        event = libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE  # called on the event loop: re-list soon
        callback_id: int = conn.domainEventRegisterAny(None, event, lambda *_: self._wake.set(), None)
        return callback_id

    def _loop(self, worker: Worker) -> None:
        failures = 0
        synced = False
        while not worker.stopping:
            self._wake.clear()
            try:
                self._sync()
            except Exception as failure:  # the loop must outlive any one bad listing
                known = isinstance(failure, LibvirtUnavailable)
                self.last_error = str(failure) if known else repr(failure)
                if not known:
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
