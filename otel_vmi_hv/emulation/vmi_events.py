"""Kubernetes Events on emulated VMIs: where operators look first (``kubectl describe vmi``).

One Warning Event per VMI and emulation reason, named from the VMI's uid and the reason, so a
restarted agent or a relist finds its Event again (409) instead of adding one, as client-go's
recorder would. Writes go through a bounded queue, a per-agent token bucket and one worker; while
the API server is down a write is retried with backoff, a full queue drops and counts. Nothing
here is waited for by detection, scrapes or readiness. Without RBAC on events (403) the failure is
counted and logged once.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import queue
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.config import Settings
from otel_vmi_hv.emulation.cluster_facts import ClusterFacts
from otel_vmi_hv.emulation.reasons import FIXES, EmulationReason
from otel_vmi_hv.interfaces import Recorder
from otel_vmi_hv.model import VMI
from otel_vmi_hv.sources.list_watch import api_request
from otel_vmi_hv.worker import Worker

log = logging.getLogger(__name__)

COMPONENT = "otel-vmi-hv"
EVENT_REASON = "SoftwareEmulation"
EVENTS_PER_SECOND = 1.0  # the bucket's refill; a node's first listing of many emulated VMIs spreads out
EVENTS_BURST = 25
QUEUE_SIZE = 1000
RETRY = Backoff(initial=1.0, maximum=60.0)
MAX_MESSAGE = 1024
MERGE_PATCH = "application/merge-patch+json"
SEE = "see docs/kubernetes.md"


class EventResult(enum.StrEnum):
    """The ``result`` label of ``otel_vmi_hv_events_total``."""

    CREATED = "created"
    UPDATED = "updated"  # the Event existed (an earlier run of the agent): its last time refreshed
    DROPPED = "dropped"  # the queue was full
    FORBIDDEN = "forbidden"  # no RBAC on events
    FAILED = "failed"  # refused for another reason


def event_name(vmi: VMI, reason: str) -> str:
    """``<vmi>.<hash of uid and reason>``: the same Event whoever writes it, whenever."""
    digest = hashlib.sha256(f"{vmi.key}\n{reason}".encode()).hexdigest()[:16]
    return f"{vmi.name[:200]}.{digest}"


def events_permission(settings: Settings, facts: object, vmis: Iterable[VMI]) -> str:
    """For ``detect``, which writes no Event: may the agent? A dry-run create, which stores nothing,
    in an emulated VMI's namespace (else the agent's)."""
    if not (settings.events and isinstance(facts, ClusterFacts)):
        return ""  # no Events to write
    fallback = dict(settings.resource_attributes).get("k8s.namespace.name", "default")
    explained = facts.explanations()
    namespace = min((vmi.namespace for vmi in vmis if vmi.key in explained), default=fallback)
    involved = {"kind": "VirtualMachineInstance", "namespace": namespace, "name": COMPONENT}
    body = {"metadata": {"name": f"{COMPONENT}.check"}, "involvedObject": involved, "type": "Warning"}
    try:
        status = _send(facts.client(), "POST", f"/api/v1/namespaces/{namespace}/events?dryRun=All", body)
    except Exception as error:  # the API server went away
        return f"not checked ({error})"
    if status == 403:
        return f"forbidden (create on events in {namespace}): grant create and patch on events, {SEE}"
    return "allowed" if status < 300 or status == 409 else f"not checked (HTTP {status})"  # 409: exists


def _send(client: Any, method: str, path: str, body: Any, content_type: str = "application/json") -> int:
    answer = api_request(client, method, path, body=body, content_type=content_type)
    answer.read()
    return int(answer.status)


class VmiEvents:
    """Queues and writes the Events; ``emulated`` never blocks."""

    def __init__(self, client: Callable[[], Any], recorder: Recorder, *, instance: str, node: str) -> None:
        self._client, self._recorder = client, recorder
        self._instance, self._node = instance, node
        self._queue: queue.Queue[tuple[VMI, str, str]] = queue.Queue(QUEUE_SIZE)
        self._forbidden_logged = False
        self._worker = Worker("vmi-events", self._loop)

    def emulated(self, vmi: VMI, reason: str, evidence: str) -> None:
        try:
            self._queue.put_nowait((vmi, reason, evidence))
        except queue.Full:
            log.debug("%s/%s: Event dropped, the queue is full", vmi.namespace, vmi.name)
            self._recorder.record_event(EventResult.DROPPED)

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        self._worker.join(0.5)

    def _loop(self, worker: Worker) -> None:
        tokens, at = float(EVENTS_BURST), time.monotonic()  # the token bucket: negative is a debt
        while not worker.stopping:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            now = time.monotonic()
            tokens, at = min(EVENTS_BURST, tokens + (now - at) * EVENTS_PER_SECOND) - 1, now
            if tokens < 0 and worker.sleep(-tokens / EVENTS_PER_SECOND):
                return
            failures = 0
            while (result := self._write(*item)) is None:
                failures += 1
                if worker.sleep(RETRY.delay(failures)):
                    return
            self._recorder.record_event(result)

    def _write(self, vmi: VMI, reason: str, evidence: str) -> EventResult | None:
        """Create the Event, or refresh it when it exists; None when worth retrying."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        fix = FIXES[EmulationReason(reason)]  # the reason, its evidence and the fix, as `detect` prints them
        message = f"Running under QEMU TCG software emulation: {reason} ({evidence}). Fix: {fix}"[
            :MAX_MESSAGE
        ]
        base = f"/api/v1/namespaces/{vmi.namespace}/events"
        try:
            status = _send(self._client(), "POST", base, self._body(vmi, reason, message, now))
            if status == 409:
                patch = {"lastTimestamp": now, "message": message}
                status = _send(
                    self._client(), "PATCH", f"{base}/{event_name(vmi, reason)}", patch, MERGE_PATCH
                )
                if 200 <= status <= 299:
                    return EventResult.UPDATED
        except Exception as error:  # connection refused or reset, timeouts: the API server is away
            log.debug("%s/%s: writing an Event failed: %r", vmi.namespace, vmi.name, error)
            return None
        if 200 <= status <= 299:
            return EventResult.CREATED
        if status == 403:
            (log.debug if self._forbidden_logged else log.warning)(
                "Events cannot be written (403): the agent's ClusterRole needs create and patch on events;"
                " metrics are not affected"
            )
            self._forbidden_logged = True
            return EventResult.FORBIDDEN
        if status >= 500 or status == 429:
            return None
        log.warning("%s/%s: the API server refused an Event (HTTP %d)", vmi.namespace, vmi.name, status)
        return EventResult.FAILED

    def _body(self, vmi: VMI, reason: str, message: str, now: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name(vmi, reason), "namespace": vmi.namespace},
            "involvedObject": {
                "apiVersion": "kubevirt.io/v1",
                "kind": "VirtualMachineInstance",
                "name": vmi.name,
                "namespace": vmi.namespace,
                "uid": vmi.key,
            },
            "type": "Warning",
            "reason": EVENT_REASON,
            "message": message,
            "source": {"component": COMPONENT, "host": self._node},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
