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

from kubernetes.client import ApiException, CoreV1Api, CoreV1Event, V1ObjectMeta, V1ObjectReference

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.config import Settings
from otel_vmi_hv.emulation.cluster_facts import ClusterFacts
from otel_vmi_hv.emulation.reasons import FIXES, EmulationReason
from otel_vmi_hv.interfaces import Recorder
from otel_vmi_hv.model import VMI
from otel_vmi_hv.worker import Worker

log = logging.getLogger(__name__)

COMPONENT = "otel-vmi-hv"
EVENT_REASON = "SoftwareEmulation"
EVENTS_PER_SECOND = 1.0  # the bucket's refill; a node's first listing of many emulated VMIs spreads out
EVENTS_BURST = 25
QUEUE_SIZE = 1000
RETRY = Backoff(initial=1.0, maximum=60.0)
TIMEOUT = (10.0, 30.0)
MAX_MESSAGE = 1024


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


def event_message(reason: str, evidence: str) -> str:
    """The reason, its evidence and the fix, as ``detect`` prints them."""
    fix = FIXES[EmulationReason(reason)]
    return f"Running under QEMU TCG software emulation: {reason} ({evidence}). Fix: {fix}"[:MAX_MESSAGE]


def events_permission(settings: Settings, facts: object, emulated: Iterable[VMI]) -> str:
    """For ``detect``, which writes no Event: may the agent? A dry-run create, which stores nothing."""
    if not (settings.events and isinstance(facts, ClusterFacts)):
        return ""  # no Events to write
    fallback = dict(settings.resource_attributes).get("k8s.namespace.name", "default")
    namespace = min((vmi.namespace for vmi in emulated), default=fallback)
    involved = V1ObjectReference(kind="VirtualMachineInstance", namespace=namespace, name=COMPONENT)
    event = CoreV1Event(metadata=V1ObjectMeta(name=f"{COMPONENT}.check"), involved_object=involved)
    try:
        CoreV1Api(facts.client()).create_namespaced_event(
            namespace, event, dry_run="All", _request_timeout=TIMEOUT
        )
    except ApiException as error:
        if error.status == 403:
            grant = "grant create and patch on events, see docs/kubernetes.md"
            return f"forbidden (create on events in {namespace}): {grant}"
        if error.status != 409:  # 409: an Event of that name exists, so creating was allowed
            return f"not checked (HTTP {error.status} {error.reason})"
    except Exception as error:  # the API server went away
        return f"not checked ({error})"
    return "allowed"


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``take`` says how long to wait for one (0: taken)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._tokens, self._at = float(burst), clock()

    def take(self) -> float:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self._rate


class VmiEvents:
    """Queues and writes the Events; ``emulated`` never blocks."""

    def __init__(
        self,
        client: Callable[[], Any],
        recorder: Recorder,
        *,
        instance: str,
        node: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._recorder = recorder
        self._instance, self._node = instance, node
        self._bucket = TokenBucket(EVENTS_PER_SECOND, EVENTS_BURST, clock)
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
        while not worker.stopping:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            while (wait := self._bucket.take()) > 0:
                if worker.sleep(wait):
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
        message = event_message(reason, evidence)
        base = f"/api/v1/namespaces/{vmi.namespace}/events"
        try:
            status = self._call("POST", base, self._body(vmi, reason, message, now))
            if status == 409:
                patch = {"lastTimestamp": now, "message": message}
                path = f"{base}/{event_name(vmi, reason)}"
                status = self._call("PATCH", path, patch, "application/merge-patch+json")
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

    def _call(self, method: str, path: str, body: Any, content_type: str = "application/json") -> int:
        client = self._client()
        request = client.param_serialize(
            method,
            path,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        answer = client.call_api(*request, _request_timeout=TIMEOUT)
        answer.read()
        return int(answer.status)
