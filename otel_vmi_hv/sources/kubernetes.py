"""Node-scoped VMI cache from the Kubernetes API: one list, then a watch resumed from its version.

CRDs cannot be field-selected on ``status.nodeName``, so, like virt-handler, the watch uses the
label ``kubevirt.io/nodeName=<node>``, which KubeVirt keeps equal to ``status.nodeName`` (it
switches when a live migration completes). A BOOKMARK moves the resume point without an object;
``410 Gone`` (or an expired continue token) means the resume point is lost, so the cache is
rebuilt from a fresh list and reconciled (VMIs deleted meanwhile go, nothing is duplicated). Any
other failure resumes the watch from the last version seen, with backoff.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.config import Settings
from otel_vmi_hv.model import VMI, LibvirtTarget
from otel_vmi_hv.tracker import Tracker

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kubevirt.io", "v1", "virtualmachineinstances"
NODE_LABEL = "kubevirt.io/nodeName"
LIST_PAGE_SIZE = 100
WATCH_TIMEOUT_RANGE = (240, 360)  # seconds; spread so a fleet of agents does not re-watch in step
CONNECT_TIMEOUT = 10.0
READ_SLACK = 30.0
BACKOFF = Backoff(initial=0.5, maximum=30.0)
NON_ROOT_UID = 107
MIN_WATCH_SECONDS = 1.0
# Pod UIDs are UUIDs; anything else is refused before it becomes part of a path.
_POD_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


# What an operator should do about the API answers that are not transient.
API_HINTS = {
    401: " (the agent's credentials were refused: check the service account token or KUBECONFIG)",
    403: " (the service account may not list virtualmachineinstances.kubevirt.io: it needs get, list and"
    " watch on them cluster-wide; see config/kubernetes/clusterrole.yaml)",
    404: " (no virtualmachineinstances.kubevirt.io resource: is KubeVirt installed in this cluster?)",
}


class ResourceExpired(Exception):
    """The resume point (resourceVersion or continue token) is gone: a relist is needed."""


def launcher_pod_on(vmi: Mapping[str, Any], node: str) -> str | None:
    """UID of the VMI's launcher pod on ``node``: the key of status.activePods whose value is it."""
    status = vmi.get("status")
    active = status.get("activePods") if isinstance(status, Mapping) else None
    if not isinstance(active, Mapping):
        return None
    pods = sorted(
        uid
        for uid, pod_node in active.items()
        if pod_node == node and isinstance(uid, str) and _POD_UID.fullmatch(uid)
    )
    return pods[0] if pods else None


def libvirt_mode(vmi: Mapping[str, Any]) -> str:
    """``session`` for non-root launchers (runtimeUser 107), ``system`` for root ones (0 or absent)."""
    status = vmi.get("status")
    user = status.get("runtimeUser") if isinstance(status, Mapping) else None
    return "session" if isinstance(user, int) and not isinstance(user, bool) and user != 0 else "system"


class VMIInterpreter:
    """Turns a VMI object into what the tracker needs, or None when it must not be reported."""

    def __init__(self, node: str, uri_template: str, pods_root: str) -> None:
        self._node = node
        self._template = uri_template
        self._pods_root = pods_root.rstrip("/") or "/"

    def __call__(self, obj: Mapping[str, Any]) -> VMI | None:
        metadata = obj.get("metadata")
        status = obj.get("status")
        if not isinstance(metadata, Mapping) or not isinstance(status, Mapping):
            return None
        uid, namespace, name = metadata.get("uid"), metadata.get("namespace"), metadata.get("name")
        if not all(isinstance(v, str) and v for v in (uid, namespace, name)):
            return None
        assert isinstance(uid, str) and isinstance(namespace, str) and isinstance(name, str)
        if status.get("phase") != "Running" or status.get("nodeName") != self._node:
            return None
        pod_uid = launcher_pod_on(obj, self._node)
        domain = f"{namespace}_{name}"
        if pod_uid is None:
            # Running here but no launcher pod recorded: report it, as unknown, rather than hide it.
            return VMI(uid, namespace, name, LibvirtTarget("", domain, f"{uid}/no-pod"))
        empty_dirs = f"{self._pods_root}/{pod_uid}/volumes/kubernetes.io~empty-dir"
        uri = self._template.format(
            pod_uid=pod_uid,
            vmi_uid=uid,
            namespace=namespace,
            name=name,
            mode=libvirt_mode(obj),
            pods_root=self._pods_root,
        )
        target = LibvirtTarget(
            uri=uri,
            domain_name=domain,
            lifetime_key=pod_uid,
            domain_file=f"{empty_dirs}/private/libvirt/qemu/{domain}.xml",
            pod_uid=pod_uid,
        )
        return VMI(uid, namespace, name, target)


def _api_client(settings: Settings) -> Any:
    from kubernetes import client, config

    if settings.kubeconfig:
        return config.new_client_from_config(config_file=settings.kubeconfig)  # type: ignore[no-untyped-call]
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


class KubernetesVMISource:
    def __init__(
        self,
        settings: Settings,
        tracker: Tracker,
        *,
        on_synced: Callable[[], None] = lambda: None,
        on_relist: Callable[[], None] = lambda: None,
        on_sync: Callable[[float], None] = lambda when: None,
        on_watch_restart: Callable[[str], None] = lambda reason: None,
        on_launcher_gone: Callable[[str], None] = lambda uri: None,
        api_client: Any = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self._settings = settings
        self._tracker = tracker
        self._on_synced = on_synced
        self._on_relist = on_relist
        self._on_sync = on_sync
        self._on_watch_restart = on_watch_restart
        self._on_launcher_gone = on_launcher_gone
        self._api_client = api_client
        self._page_size = page_size
        self._selector = f"{NODE_LABEL}={settings.node_name}"
        self._interpret = VMIInterpreter(settings.node_name, settings.libvirt_uri, settings.pods_root)
        self._targets: dict[str, LibvirtTarget] = {}  # uid → target of every VMI being reported
        self._uri_users: Counter[str] = Counter()  # libvirt URI → VMIs using it
        self._resource_version: str | None = None
        self._stop = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self.last_sync: float | None = None
        self.last_error: str | None = None  # why the last list or watch failed, for `detect`
        self.synced = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="vmi-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.close()
            except Exception:  # closing a half-dead socket may fail in many ways; it is going anyway
                log.debug("closing the watch response failed", exc_info=True)

    # ------------------------------------------------------------------ the loop

    def _api(self) -> Any:
        from kubernetes import client

        if self._api_client is None:
            self._api_client = _api_client(self._settings)
        return client.CustomObjectsApi(self._api_client)

    def _loop(self) -> None:
        from kubernetes.client.exceptions import ApiException

        failures = 0
        while not self._stop.is_set():
            try:
                if self._resource_version is None:
                    self.relist()
                opened = time.monotonic()
                self._watch_once()
                failures = 0
                self._on_watch_restart("closed")
                if time.monotonic() - opened < MIN_WATCH_SECONDS:
                    # A stream that ends at once (a proxy, a misbehaving server) must not make
                    # the agent spin against the API server.
                    self._stop.wait(MIN_WATCH_SECONDS)
                continue
            except ResourceExpired:
                log.info("VMI watch position expired (410 Gone); relisting")
                self._resource_version = None
                self._on_watch_restart("expired")
                continue
            except ApiException as error:
                if error.status == 410 and self._resource_version is not None:
                    # Some servers refuse a too-old watch with HTTP 410 instead of an ERROR event.
                    log.info("VMI watch position expired (HTTP 410); relisting")
                    self._resource_version = None
                    self._on_watch_restart("expired")
                    continue
                reason = f"HTTP {error.status} {error.reason}" + API_HINTS.get(error.status or 0, "")
            except Exception as error:  # connection refused/reset, timeouts, bad JSON: all transient
                if self._stop.is_set():
                    return
                reason = f"{type(error).__name__}: {error}"
            self.last_error = reason
            failures += 1
            self._on_watch_restart("error")
            delay = BACKOFF.delay(failures)
            (log.warning if failures in (1, 5) or failures % 20 == 0 else log.debug)(
                "VMI %s from the Kubernetes API failed (%s); retrying in %.1fs (attempt %d)",
                "list" if self._resource_version is None else "watch",
                reason,
                delay,
                failures,
            )
            self._stop.wait(delay)

    def relist(self) -> None:
        """List every VMI of this node (all pages) and reconcile the tracker with it."""
        from kubernetes.client.exceptions import ApiException

        api = self._api()
        # Pages are turned into VMIs as they arrive: a full VMI object is ~20 KB of JSON, and
        # holding thousands of them at once would raise the process's memory high-water mark.
        reported: dict[str, VMI] = {}
        listed = 0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"label_selector": self._selector, "limit": self._page_size}
            if token:
                kwargs["_continue"] = token
            try:
                page = api.list_cluster_custom_object(
                    GROUP, VERSION, PLURAL, _request_timeout=(CONNECT_TIMEOUT, 60), **kwargs
                )
            except ApiException as error:
                if error.status == 410 and token:
                    log.info("VMI list continue token expired; restarting the list")
                    reported, listed, token = {}, 0, None
                    continue
                raise
            for item in page.get("items") or ():
                if isinstance(item, Mapping):
                    listed += 1
                    vmi = self._interpret_safely(item)
                    if vmi is not None:
                        reported[vmi.key] = vmi
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") or None
            del page
            if not token:
                version = metadata.get("resourceVersion")
                break
        # The tracker first: once it no longer holds a VMI, nothing will call its launcher again,
        # so forgetting the launcher's daemon afterwards cannot be undone by a late retry.
        self._tracker.replace_all(reported.values())
        for uid in [uid for uid in self._targets if uid not in reported]:
            self._release(uid)
        for uid, vmi in reported.items():
            self._remember(uid, vmi.target)
        self._resource_version = str(version) if version else None
        self.last_sync = time.time()
        self._on_sync(self.last_sync)
        self._on_relist()
        log.debug("listed %d VMIs on %s, %d running here", listed, self._settings.node_name, len(reported))
        if not self.synced:
            self.synced = True
            self._on_synced()

    def _watch_once(self) -> None:
        api = self._api()
        timeout = random.randint(*WATCH_TIMEOUT_RANGE)  # noqa: S311 - spreading, not security
        response = api.list_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            label_selector=self._selector,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=self._resource_version,
            timeout_seconds=timeout,
            _preload_content=False,
            _request_timeout=(CONNECT_TIMEOUT, timeout + READ_SLACK),
        )
        self._response = response
        try:
            for event in _events(response):
                if self._stop.is_set():
                    return
                self._apply(event)
        finally:
            self._response = None
            response.release_conn()

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            return
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise ResourceExpired(str(obj.get("message", "")))
            raise RuntimeError(
                f"watch error event: {obj.get('code')} {obj.get('reason')} {obj.get('message')}"
            )
        metadata = obj.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
        if kind in ("ADDED", "MODIFIED"):
            self._upsert(obj)
        elif kind == "DELETED":
            uid = metadata.get("uid") if isinstance(metadata, Mapping) else None
            if isinstance(uid, str):
                self._forget(uid)
        elif kind != "BOOKMARK":
            log.debug("ignoring watch event of type %r", kind)
        if isinstance(version, str) and version:
            self._resource_version = version
        self.last_sync = time.time()
        self._on_sync(self.last_sync)

    # ------------------------------------------------------------------ cache updates

    def _interpret_safely(self, obj: Mapping[str, Any]) -> VMI | None:
        try:
            return self._interpret(obj)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as error:
            metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
            label = (
                f"{metadata.get('namespace')}/{metadata.get('name')}"
                if isinstance(metadata, Mapping)
                else "?"
            )
            log.warning("%s: cannot interpret VMI object (%s); not reporting it", label, error)
            return None

    def _upsert(self, obj: Mapping[str, Any]) -> None:
        vmi = self._interpret_safely(obj)
        metadata = obj.get("metadata")
        uid = metadata.get("uid") if isinstance(metadata, Mapping) else None
        if vmi is None:
            if isinstance(uid, str):
                self._forget(uid)
            return
        self._tracker.upsert(vmi)
        self._remember(vmi.key, vmi.target)

    def _remember(self, uid: str, target: LibvirtTarget) -> None:
        previous = self._targets.get(uid)
        self._targets[uid] = target
        if previous is None or previous.uri != target.uri:
            self._uri_users[target.uri] += 1
            if previous is not None:
                self._unuse(previous.uri)

    def _forget(self, uid: str) -> None:
        if uid in self._targets:
            self._tracker.remove(uid)
            self._release(uid)

    def _release(self, uid: str) -> None:
        self._unuse(self._targets.pop(uid).uri)

    def _unuse(self, uri: str) -> None:
        """One VMI fewer uses ``uri``; the last one gone means its launcher's daemon is gone.

        Counted, not searched: with thousands of VMIs a scan per deletion would be quadratic.
        (Launcher URIs are one per pod; a template without {pod_uid} shares one among many.)
        """
        self._uri_users[uri] -= 1
        if self._uri_users[uri] <= 0:
            del self._uri_users[uri]
            if uri:
                self._on_launcher_gone(uri)


def _events(response: Any) -> Iterator[Mapping[str, Any]]:
    """Watch events from a streaming response: one JSON object per line."""
    buffer = b""
    for chunk in response.stream(amt=65536, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                event = json.loads(line)
                if isinstance(event, Mapping):
                    yield event
    if buffer.strip():
        event = json.loads(buffer)
        if isinstance(event, Mapping):
            yield event
