"""Wires source → tracker → telemetry → HTTP, and owns start-up and shutdown order."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Protocol

from otel_vmi_hv.config import Settings
from otel_vmi_hv.http import HttpServer, Readiness, tls_context
from otel_vmi_hv.libvirt_detector import EventLoop, LibvirtDetector, silence_libvirt_stderr
from otel_vmi_hv.model import VMI, Detection
from otel_vmi_hv.telemetry import Telemetry
from otel_vmi_hv.tracker import Tracker

log = logging.getLogger(__name__)

READY_SYNC = "initial VMI sync not done"
READY_EXPORTERS = "exporters not started"
SHUTDOWN_BUDGET = 3.5  # SIGTERM to exit must stay under 5 s (final OTLP export included), with margin


class Source(Protocol):
    last_sync: float | None
    last_error: str | None

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def poke(self) -> None: ...


class Agent:
    def __init__(self, settings: Settings, *, with_telemetry: bool = True) -> None:
        self.settings = settings
        silence_libvirt_stderr()
        self.detector = LibvirtDetector(
            settings.libvirt_timeout,
            on_recovered=self._libvirt_recovered,
            on_disconnected=lambda _uri: self.source.poke(),
            keep_connections=settings.source != "kubernetes",
        )
        self.readiness = Readiness(READY_SYNC, READY_EXPORTERS)
        self.telemetry: Telemetry | None = None
        self.tracker = Tracker(
            self._detect,
            settings.node_name,
            on_detection=self._record_detection,
            on_discarded=self._detection_discarded,
        )
        self.source: Source = self._build_source()
        self.http: HttpServer | None = None
        if with_telemetry:
            self.telemetry = Telemetry(
                settings,
                self.tracker.publish,
                connection_states=self.detector.states,
                connection_state_version=lambda: self.detector.state_version,
                last_sync=lambda: self.source.last_sync,
            )
        self.synced = threading.Event()

    def _build_source(self) -> Source:
        if self.settings.source == "kubernetes":
            from otel_vmi_hv.sources.kubernetes import KubernetesVMISource

            return KubernetesVMISource(
                self.settings,
                self.tracker,
                on_synced=self._synced,
                on_relist=self._record_relist,
                on_watch_restart=self._record_watch_restart,
                on_launcher_gone=self.detector.forget,
            )
        from otel_vmi_hv.sources.libvirt import LibvirtDomainSource

        return LibvirtDomainSource(
            self.detector,
            self.tracker,
            self.settings.libvirt_uri,
            self.settings.resync_interval,
            on_synced=self._synced,
            on_relist=self._record_relist,
        )

    # ------------------------------------------------------------------ callbacks between parts

    def _detect(self, vmi: VMI) -> Detection:
        return self.detector.detect(vmi.target)

    def _record_detection(self, detection: Detection, seconds: float) -> None:
        if self.telemetry is not None:
            self.telemetry.self_metrics.record_detection(detection, seconds)

    def _detection_discarded(self, vmi: VMI) -> None:
        """A detection finished after its VMI left: release the launcher state it may have created."""
        if self.settings.source == "kubernetes" and vmi.target.uri not in self.tracker.uris():
            self.detector.forget(vmi.target.uri)

    def _record_relist(self) -> None:
        if self.telemetry is not None:
            self.telemetry.self_metrics.record_relist()

    def _record_watch_restart(self, reason: str) -> None:
        if self.telemetry is not None:
            self.telemetry.self_metrics.record_watch_restart(reason)

    def _synced(self) -> None:
        if not self.synced.is_set():
            log.info("initial VMI sync done")
        self.readiness.done(READY_SYNC)
        self.synced.set()

    def _libvirt_recovered(self, uri: str) -> None:
        count = self.tracker.retry_unknown(uri)
        if count:
            log.info("re-detecting %d VMIs of %s after recovery", count, uri)
        self.source.poke()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.settings.source == "kubernetes" and not os.path.isdir(self.settings.pods_root):
            log.error(
                "OTEL_VMI_HV_PODS_ROOT %s does not exist: mount the host's /var/lib/kubelet/pods there "
                "(read-only), or every VMI will be reported unknown (reason no_socket)",
                self.settings.pods_root,
            )
        EventLoop.ensure_running()
        self.tracker.start()
        if self.telemetry is not None:
            tls = None
            if self.settings.tls_cert_file and self.settings.tls_key_file:
                tls = tls_context(
                    self.settings.tls_cert_file, self.settings.tls_key_file, self.settings.tls_client_ca_file
                )
            self.http = HttpServer(
                self.settings.prometheus_host,
                self.settings.prometheus_port,
                self.telemetry.render_prometheus,
                self.readiness,
                tls=tls,
            )
            self.http.start()
            log.info(
                "serving /metrics, /healthz, /readyz over %s on %s:%d (exporters: %s)",
                "HTTPS" + (" with client certificates" if self.settings.tls_client_ca_file else "")
                if tls
                else "HTTP",
                self.settings.prometheus_host,
                self.http.port,
                ",".join(self.settings.metrics_exporters) or "none",
            )
        self.readiness.done(READY_EXPORTERS)
        self.source.start()

    def stop(self, budget: float = SHUTDOWN_BUDGET) -> None:
        started = time.monotonic()
        self.source.stop()
        if self.http is not None:
            self.http.stop()
        self.tracker.stop(timeout=0.5)
        if self.telemetry is not None:
            self.telemetry.shutdown(max(0.5, budget - (time.monotonic() - started)))
        self.detector.close()
        log.info("stopped in %.2fs", time.monotonic() - started)
