"""Wires source → tracker → telemetry → HTTP, and owns start-up and shutdown order.

Parts are built bottom-up and handed to each other explicitly; nothing refers to a part built
later.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Protocol

from otel_vmi_hv.config import Settings
from otel_vmi_hv.detection.order import DetectionOrder
from otel_vmi_hv.detection.proc.detector import ProcDetector
from otel_vmi_hv.emulation.cluster_facts import ClusterFacts, emulation_facts_for
from otel_vmi_hv.emulation.vmi_events import VmiEvents
from otel_vmi_hv.export.telemetry import Telemetry
from otel_vmi_hv.interfaces import Detector, Recorder
from otel_vmi_hv.server import HttpServer, Readiness, limits_from, tls_context
from otel_vmi_hv.tracker import Tracker

if TYPE_CHECKING:
    from otel_vmi_hv.detection.libvirt.calls import LibvirtCalls

log = logging.getLogger(__name__)

READY_SYNC = "initial VMI sync not done"
READY_EXPORTERS = "exporters not started"
SHUTDOWN_BUDGET = 3.5  # SIGTERM to exit must stay under 5 s (final OTLP export included), with margin


class _NoDaemons:
    """The libvirt connection states of an agent that never loads libvirt: none."""

    def states(self) -> dict[str, str]:
        return {}


class Source(Protocol):
    last_error: str | None  # why the last listing failed, for `detect`

    def start(self) -> None: ...
    def stop(self) -> None: ...


class Agent:
    def __init__(self, settings: Settings, *, with_telemetry: bool = True, cross_check: bool = False) -> None:
        """``cross_check`` asks libvirt even where /proc answered (``detect`` compares the two)."""
        self.settings = settings
        kubernetes = settings.source == "kubernetes"
        self.telemetry = Telemetry(settings) if with_telemetry else None
        self.metrics: Recorder = self.telemetry.self_metrics if self.telemetry else Recorder()
        self.readiness = Readiness(READY_SYNC, READY_EXPORTERS)
        self.synced = threading.Event()
        # libvirt (its Python binding and the C library behind it, see BENCHMARKS.md) is loaded only
        # where a libvirt method or the libvirt source can run: never for /proc-only detection.
        self.libvirt: LibvirtCalls | None = None
        if self._libvirt_reachable():
            from otel_vmi_hv.detection.libvirt.calls import LibvirtCalls
            from otel_vmi_hv.detection.libvirt.event_loop import silence_libvirt_stderr

            silence_libvirt_stderr()
            self.libvirt = LibvirtCalls(settings.libvirt_timeout, keep_connections=not kubernetes)
        self.detector = DetectionOrder(self._detectors(), self.metrics, ask_both=cross_check)
        # Why emulated VMIs are: this node's Node and the KubeVirt CR, or this host's KVM device,
        # recomputed by the facts' own worker whenever the tracker's snapshot changes.
        self.emulation = emulation_facts_for(settings, self.metrics)
        self.tracker = Tracker(
            self.detector.detect,
            settings.node_name,
            metrics=self.metrics,
            # A launcher's daemon is one per VMI: forgotten once no VMI needs it. The standalone
            # daemon serves every domain and is kept.
            release=self.libvirt.forget if kubernetes and self.libvirt else None,
            on_change=self.emulation.wake,
        )
        self.emulation.follow(self.tracker.snapshot)
        self.events = self._build_events(with_telemetry)
        if self.libvirt is not None:
            self.libvirt.subscribe(recovered=self.tracker.retry_unknown)
        self.source: Source = self._build_source()
        if self.telemetry is not None:
            daemons = self.libvirt or _NoDaemons()
            self.telemetry.register_vmi_instruments(self.tracker, daemons, self.emulation)
        self.http: HttpServer | None = None
        self._uses_event_loop = False

    def _build_source(self) -> Source:
        if self.settings.source == "kubernetes":
            from otel_vmi_hv.sources.kubernetes import KubernetesVMISource

            return KubernetesVMISource(
                self.settings, self.tracker, metrics=self.metrics, on_synced=self._synced
            )
        from otel_vmi_hv.sources.libvirt import LibvirtDomainSource

        assert self.libvirt is not None  # the libvirt source always reaches libvirt
        return LibvirtDomainSource(
            self.libvirt,
            self.tracker,
            self.settings.libvirt_uri,
            self.settings.resync_interval,
            metrics=self.metrics,
            on_synced=self._synced,
        )

    def _build_events(self, running: bool) -> VmiEvents | None:
        """Events on emulated VMIs: the agent's (not `detect`'s), in KubeVirt mode, unless switched off."""
        if not (running and self.settings.events and isinstance(self.emulation, ClusterFacts)):
            return None
        settings = self.settings
        instance = dict(settings.resource_attributes).get("k8s.pod.name") or settings.node_name
        events = VmiEvents(self.emulation.client, self.metrics, instance=instance, node=settings.node_name)
        self.emulation.tell(events)
        return events

    def _detectors(self) -> list[Detector]:
        """/proc first when it is on (no RPC, cannot hang), then the launcher's libvirt."""
        detectors: list[Detector] = [ProcDetector(self.settings.proc_root)] if self.settings.proc_root else []
        if self.libvirt is not None:
            from otel_vmi_hv.detection.libvirt.domain import DomainDetector

            detectors.append(DomainDetector(self.libvirt))
        return detectors

    def _libvirt_reachable(self) -> bool:
        """False only for a /proc-only deployment: KubeVirt mode with no pods-root mount."""
        s = self.settings
        return not (s.source == "kubernetes" and s.proc_root and not os.path.isdir(s.pods_root))

    def _synced(self) -> None:
        if not self.synced.is_set():
            log.info("initial VMI sync done")
        self.readiness.done(READY_SYNC)
        self.synced.set()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.settings.proc_root and not self._libvirt_reachable():
            log.info("detecting through %s only (no pods root mounted)", self.settings.proc_root)
        elif self.settings.source == "kubernetes" and not os.path.isdir(self.settings.pods_root):
            log.error(
                "OTEL_VMI_HV_PODS_ROOT %s does not exist: mount the host's /var/lib/kubelet/pods there "
                "(read-only), or every VMI will be reported unknown (reason no_socket)",
                self.settings.pods_root,
            )
        if self.libvirt is not None:
            from otel_vmi_hv.detection.libvirt.event_loop import EventLoop

            EventLoop.acquire()
            self._uses_event_loop = True
        self.tracker.start()
        if self.telemetry is not None:
            self._start_http(self.telemetry)
        self.readiness.done(READY_EXPORTERS)
        if self.events is not None:
            self.events.start()
        self.emulation.start()
        self.source.start()

    def _start_http(self, telemetry: Telemetry) -> None:
        settings = self.settings
        tls = None
        if settings.tls_cert_file and settings.tls_key_file:
            tls = tls_context(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
        self.http = HttpServer(
            settings.prometheus_host,
            settings.prometheus_port,
            telemetry.scrape,
            self.readiness,
            render_cached=telemetry.scrape_cached,
            tls=tls,
            limits=limits_from(settings),
        )
        self.http.start()
        log.info(
            "serving /metrics, /healthz, /readyz over %s on %s:%d (exporters: %s)",
            "HTTPS" + (" with client certificates" if settings.tls_client_ca_file else "") if tls else "HTTP",
            settings.prometheus_host,
            self.http.port,
            ",".join(settings.metrics_exporters) or "none",
        )

    def stop(self, budget: float = SHUTDOWN_BUDGET) -> None:
        started = time.monotonic()
        self.source.stop()
        self.emulation.stop()
        if self.events is not None:
            self.events.stop()
        if self.http is not None:
            self.http.stop()
        self.tracker.stop(timeout=0.5)
        if self.telemetry is not None:
            self.telemetry.shutdown(max(0.5, budget - (time.monotonic() - started)))
        if self.libvirt is not None:
            from otel_vmi_hv.detection.libvirt.calls import CLOSE_TIMEOUT
            from otel_vmi_hv.detection.libvirt.event_loop import EventLoop

            # Every connection let go of, then libvirt's event loop ended: nothing of libvirt may
            # still run (and call into Python) while the interpreter shuts down. A hung daemon's
            # connection cannot be waited for; the budget bounds both.
            left = max(0.2, budget - (time.monotonic() - started))
            self.libvirt.close(timeout=min(CLOSE_TIMEOUT, left / 2))
            if self._uses_event_loop:
                self._uses_event_loop = False
                EventLoop.release(timeout=min(CLOSE_TIMEOUT, left / 2))
        log.info("stopped in %.2fs", time.monotonic() - started)
