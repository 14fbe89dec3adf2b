"""What an emulated VMI's launcher pod requests: the launcher's own word on ``<device>_not_requested``.

KubeVirt renders every launcher pod with the extended resource of the cluster's hypervisor in its
limits unless emulation is allowed, so the pod spec says whether this VMI asked for acceleration,
whatever the KubeVirt CR says now. The VMI names its launcher only by uid and a pod can be fetched
only by name, so the one launcher is found with a list narrowed to it (the VMI's namespace, label
``kubevirt.io/created-by=<VMI uid>``, field ``spec.nodeName``), from the watch cache. It is asked
once per launcher, on a worker of its own, and never watched: a pod's resources cannot change.
Without RBAC to list pods (403) nothing is asked for five minutes.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from otel_vmi_hv.emulation.reasons import DEVICE_RESOURCE_PREFIX, LauncherRequest
from otel_vmi_hv.fields import items, mapping, text
from otel_vmi_hv.model import VMI
from otel_vmi_hv.sources.list_watch import REQUEST_TIMEOUT, Resource, get_collection
from otel_vmi_hv.worker import Worker

log = logging.getLogger(__name__)

CREATED_BY_LABEL = "kubevirt.io/created-by"  # on every launcher pod: the uid of its VMI
FORBIDDEN_RETRY = 300.0  # a 403: RBAC does not change often; ask again after five minutes
ERROR_RETRY = 30.0  # the API server did not answer
ABSENT_RETRY = 60.0  # the pod was not (yet, or no longer) listed
MAX_ENTRIES = 4096  # launchers remembered; the least recently asked go first


@dataclass(frozen=True, slots=True)
class PodsIn(Resource):
    """The pods of one namespace (a namespaced collection's path)."""

    namespace: str = ""

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"


def launcher_request_from(pod: Mapping[str, Any], device: str) -> LauncherRequest:
    """Whether ``pod`` requests ``devices.kubevirt.io/<device>`` in any container, with the evidence."""
    resource = f"{DEVICE_RESOURCE_PREFIX}{device}"
    name = f"{text(pod, 'metadata', 'namespace')}/{text(pod, 'metadata', 'name')}"
    asked: dict[str, str] = {}  # devices.kubevirt.io/* resource -> quantity, over all containers
    for container in items(pod, "spec", "containers"):
        for section in ("limits", "requests"):
            for key, quantity in mapping(container, "resources", section).items():
                if key.startswith(DEVICE_RESOURCE_PREFIX) and str(quantity) != "0":
                    asked[key] = str(quantity)
    if resource in asked:
        return LauncherRequest(True, f"launcher pod {name} requests {resource}: {asked[resource]}")
    others = f" (it requests {', '.join(sorted(asked))})" if asked else ""
    return LauncherRequest(False, f"launcher pod {name} requests no {resource}{others}")


@dataclass(slots=True)
class _Entry:
    device: str
    result: LauncherRequest | None = None
    pending: bool = True
    retry_at: float = 0.0


class LauncherPods:
    """Launcher pod requests by pod uid, looked up on a worker when first asked for."""

    def __init__(self, client: Callable[[], Any], node_name: str, *, on_answer: Callable[[], None]) -> None:
        self._client = client
        self._node = node_name
        self._on_answer = on_answer
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._forbidden_until = 0.0
        self._work: queue.SimpleQueue[tuple[VMI, str, str] | None] = queue.SimpleQueue()
        self._worker = Worker("launcher-pods", self._loop)

    def request(self, vmi: VMI, device: str) -> LauncherRequest | None:
        """What the VMI's launcher requests, if known; otherwise queues a lookup (once) and returns None."""
        pod_uid = vmi.target.pod_uid
        if not pod_uid:
            return None
        with self._lock:
            now = time.monotonic()
            entry = self._entries.get(pod_uid)
            if entry is not None and entry.device == device:
                self._entries.move_to_end(pod_uid)
                if entry.result is not None or entry.pending or now < entry.retry_at:
                    return entry.result
            if now < self._forbidden_until:
                return None
            self._entries[pod_uid] = _Entry(device)
            self._entries.move_to_end(pod_uid)
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)
        self._work.put((vmi, pod_uid, device))
        return None

    def pending(self) -> bool:
        """Some lookup has not finished (``detect`` waits for them)."""
        with self._lock:
            return any(entry.pending for entry in self._entries.values())

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        self._work.put(None)
        self._worker.join(0.5)

    def _loop(self, worker: Worker) -> None:
        while not worker.stopping and (item := self._work.get()) is not None:
            vmi, pod_uid, device = item
            result, retry = self._look_up(vmi, pod_uid, device)
            with self._lock:
                entry = self._entries.get(pod_uid)
                if entry is None or entry.device != device:
                    continue
                entry.result, entry.retry_at = result, time.monotonic() + retry
                # Under the lock: the facts' worker this wakes sees the answer and the end of
                # pending together, and `detect` never sees the facts settled without the answer.
                self._on_answer()
                entry.pending = False

    def _look_up(self, vmi: VMI, pod_uid: str, device: str) -> tuple[LauncherRequest | None, float]:
        """One filtered list; (the answer or None, seconds before asking again when None)."""
        from kubernetes.client.exceptions import ApiException

        try:
            answer = get_collection(
                self._client(),
                PodsIn("pods", namespace=vmi.namespace),
                REQUEST_TIMEOUT,
                label_selector=f"{CREATED_BY_LABEL}={vmi.key}",
                field_selector=f"spec.nodeName={self._node}",
                resource_version="0",
            )
            pods = items(json.loads(answer.read()), "items")
        except Exception as error:  # a 403, connection refused or reset, timeouts, a body that is not JSON
            if not (isinstance(error, ApiException) and error.status == 403):
                log.debug("%s/%s: listing its launcher pod failed: %r", vmi.namespace, vmi.name, error)
                return None, ERROR_RETRY
            with self._lock:
                first = self._forbidden_until == 0.0
                self._forbidden_until = time.monotonic() + FORBIDDEN_RETRY
            (log.info if first else log.debug)(
                "launcher pods cannot be listed (403): the reason for emulated VMIs comes from the"
                " Node and the KubeVirt CR only (list on pods lets the agent read what launchers request)"
            )
            return None, FORBIDDEN_RETRY
        pod = next((pod for pod in pods if text(pod, "metadata", "uid") == pod_uid), None)
        return (None, ABSENT_RETRY) if pod is None else (launcher_request_from(pod, device), 0.0)
