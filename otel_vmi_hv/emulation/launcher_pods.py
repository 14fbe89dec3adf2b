"""What an emulated VMI's launcher pod requests: the launcher's own word on ``<device>_not_requested``.

KubeVirt renders every launcher pod with the extended resource of the cluster's hypervisor
(``devices.kubevirt.io/kvm`` or ``devices.kubevirt.io/mshv``) in its compute container's limits,
unless emulation is allowed; the pod spec therefore says whether this VMI asked for acceleration,
whatever the KubeVirt CR says now. The VMI names its launcher only by uid (``status.activePods``),
and the API can fetch a pod only by name, so the one launcher is found with a list narrowed to it:
the VMI's namespace, the label KubeVirt puts on its launchers (``kubevirt.io/created-by=<VMI uid>``)
and this node (``spec.nodeName``), answered from the API server's watch cache. It is asked once per
launcher pod, only for VMIs that run emulated on a node that has the device, and never watched: a
pod's resources cannot change. Without RBAC to list pods (403) nothing is asked for five minutes
and the reason is decided as before, from the node and the KubeVirt CR.

Lookups run on one thread of their own: ``request`` is called from metric callbacks, which must
not do I/O; the answer arrives later and ``on_change`` tells the owner to re-render.
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
from otel_vmi_hv.model import VMI

log = logging.getLogger(__name__)

CREATED_BY_LABEL = "kubevirt.io/created-by"  # on every launcher pod: the uid of its VMI
REQUEST_TIMEOUT = (10.0, 30.0)  # connect, read
FORBIDDEN_RETRY = 300.0  # a 403: RBAC does not change often; ask again after five minutes
ERROR_RETRY = 30.0  # the API server did not answer
ABSENT_RETRY = 60.0  # the pod was not (yet, or no longer) listed
MAX_ENTRIES = 4096  # launchers remembered (a few hundred bytes each); the least recently asked go first


def launcher_request_from(pod: Mapping[str, Any], device: str) -> LauncherRequest:
    """Whether ``pod`` requests ``devices.kubevirt.io/<device>`` in any container, with the evidence."""
    resource = f"{DEVICE_RESOURCE_PREFIX}{device}"
    metadata = pod.get("metadata") if isinstance(pod.get("metadata"), Mapping) else {}
    assert isinstance(metadata, Mapping)
    name = f"{metadata.get('namespace')}/{metadata.get('name')}"
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    asked: dict[str, str] = {}  # devices.kubevirt.io/* resource -> quantity, over all containers
    for container in containers if isinstance(containers, list) else []:
        resources = container.get("resources") if isinstance(container, Mapping) else None
        for section in ("limits", "requests"):
            amounts = resources.get(section) if isinstance(resources, Mapping) else None
            for key, quantity in amounts.items() if isinstance(amounts, Mapping) else ():
                if isinstance(key, str) and key.startswith(DEVICE_RESOURCE_PREFIX) and str(quantity) != "0":
                    asked[key] = str(quantity)
    if resource in asked:
        return LauncherRequest(True, f"launcher pod {name} requests {resource}: {asked[resource]}")
    others = f" (it requests {', '.join(sorted(asked))})" if asked else ""
    return LauncherRequest(False, f"launcher pod {name} requests no {resource}{others}")


def list_launcher_pods(api_client: Any, namespace: str, vmi_uid: str, node: str) -> list[Any]:
    """The pods of ``namespace`` that KubeVirt created for VMI ``vmi_uid`` on ``node`` (the watch cache's).

    Through the client's public ``ApiClient``, as the list-watches do (``sources/list_watch.py``):
    importing ``CoreV1Api`` for one method costs 21 MiB resident. Raises ApiException on a non-2xx.
    """
    from kubernetes.client.exceptions import ApiException

    method, url, headers, body, post_params = api_client.param_serialize(
        "GET",
        "/api/v1/namespaces/{namespace}/pods",
        path_params={"namespace": namespace},
        query_params=[
            ("labelSelector", f"{CREATED_BY_LABEL}={vmi_uid}"),
            ("fieldSelector", f"spec.nodeName={node}"),
            ("resourceVersion", "0"),
        ],
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    answer = api_client.call_api(method, url, headers, body, post_params, _request_timeout=REQUEST_TIMEOUT)
    data = answer.read()
    if not 200 <= answer.status <= 299:
        raise ApiException(http_resp=answer)
    items = json.loads(data).get("items")
    return items if isinstance(items, list) else []


@dataclass(slots=True)
class _Entry:
    device: str
    result: LauncherRequest | None = None
    pending: bool = True
    retry_at: float = 0.0


class LauncherPods:
    """Launcher pod requests by pod uid, looked up in the background on first demand."""

    def __init__(
        self,
        client: Callable[[], Any],
        node_name: str,
        *,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._node = node_name
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._forbidden_until = 0.0
        self._work: queue.SimpleQueue[tuple[VMI, str, str] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def request(self, vmi: VMI, device: str) -> LauncherRequest | None:
        """What the VMI's launcher requests, if known; otherwise asks for it (once) and returns None."""
        pod_uid = vmi.target.pod_uid
        if not pod_uid:
            return None
        with self._lock:
            now = self._clock()
            entry = self._entries.get(pod_uid)
            if entry is not None and entry.device == device:
                self._entries.move_to_end(pod_uid)
                if entry.result is not None or entry.pending or now < entry.retry_at:
                    return entry.result
            if self._stopped or now < self._forbidden_until:
                return None
            self._entries[pod_uid] = _Entry(device)
            self._entries.move_to_end(pod_uid)
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)
            start = self._thread is None
            if start:
                self._thread = threading.Thread(target=self._loop, name="launcher-pods", daemon=True)
        self._work.put((vmi, pod_uid, device))
        if start:
            assert self._thread is not None
            self._thread.start()
        return None

    def pending(self) -> bool:
        """Some lookup has not finished (``detect`` waits for them)."""
        with self._lock:
            return any(entry.pending for entry in self._entries.values())

    def stop(self, timeout: float = 0.5) -> None:
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._work.put(None)
        if thread is not None:
            thread.join(timeout)

    # ------------------------------------------------------------------ the lookup thread

    def _loop(self) -> None:
        while (item := self._work.get()) is not None:
            vmi, pod_uid, device = item
            try:
                result, retry = self._look_up(vmi, pod_uid, device)
            except Exception:  # a bug must not end the thread: the entry is retried later
                log.exception("%s/%s: reading the launcher pod failed", vmi.namespace, vmi.name)
                result, retry = None, ERROR_RETRY
            with self._lock:
                entry = self._entries.get(pod_uid)
                if entry is not None and entry.device == device:
                    entry.result, entry.pending = result, False
                    entry.retry_at = self._clock() + retry
            if result is not None:
                self._on_change()

    def _look_up(self, vmi: VMI, pod_uid: str, device: str) -> tuple[LauncherRequest | None, float]:
        """One filtered list; (the answer or None, seconds before asking again when None)."""
        from kubernetes.client.exceptions import ApiException

        try:
            items = list_launcher_pods(self._client(), vmi.namespace, vmi.key, self._node)
        except ApiException as error:
            if error.status == 403:
                with self._lock:
                    first = self._forbidden_until == 0.0
                    self._forbidden_until = self._clock() + FORBIDDEN_RETRY
                (log.info if first else log.debug)(
                    "launcher pods cannot be listed (403): the reason for emulated VMIs comes from the"
                    " Node and the KubeVirt CR only (list on pods lets the agent read what launchers request)"
                )
                return None, FORBIDDEN_RETRY
            log.debug("%s/%s: listing its launcher pod failed: %s", vmi.namespace, vmi.name, error)
            return None, ERROR_RETRY
        except Exception as error:  # connection refused or reset, timeouts, a body that is not JSON
            log.debug("%s/%s: listing its launcher pod failed: %r", vmi.namespace, vmi.name, error)
            return None, ERROR_RETRY
        for pod in items:
            metadata = pod.get("metadata") if isinstance(pod, Mapping) else None
            if isinstance(metadata, Mapping) and metadata.get("uid") == pod_uid:
                return launcher_request_from(pod, device), 0.0
        return None, ABSENT_RETRY
