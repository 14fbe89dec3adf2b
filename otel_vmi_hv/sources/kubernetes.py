"""Node-scoped VMI cache from the Kubernetes API: one list, then a watch resumed from its version.

CRDs cannot be field-selected on ``status.nodeName``, so, like virt-handler, the watch uses the
label ``kubevirt.io/nodeName=<node>``, which KubeVirt keeps equal to ``status.nodeName`` (it
switches when a live migration completes). A BOOKMARK moves the resume point without an object;
``410 Gone`` (or an expired continue token) means the resume point is lost, so the cache is
rebuilt from a fresh list and reconciled (VMIs deleted meanwhile go, nothing is duplicated). Any
other failure resumes the watch from the last version seen, with backoff. The loop itself (lists from
the API server's watch cache, spread relists, silent watches, the line cap) is ``list_watch.py``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from otel_vmi_hv.config import Settings
from otel_vmi_hv.interfaces import Sink
from otel_vmi_hv.model import VMI, LibvirtTarget, SoftwareEmulation
from otel_vmi_hv.sources.list_watch import ListWatch, ListWatchOptions, Resource

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kubevirt.io", "v1", "virtualmachineinstances"
NODE_LABEL = "kubevirt.io/nodeName"
LIST_PAGE_SIZE = 100
VMI_RESOURCE = Resource(PLURAL, GROUP, VERSION)
NON_ROOT_UID = 107
# Pod UIDs are UUIDs; anything else is refused before it becomes part of a path.
_POD_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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


def software_emulation(vmi: Mapping[str, Any]) -> SoftwareEmulation | None:
    """The VMI's ``SoftwareEmulation`` condition when its status is True (virt-handler sets it for
    cross-architecture guests, reason ``CrossArchitectureEmulation``)."""
    status = vmi.get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    if not isinstance(conditions, list):
        return None
    for condition in conditions:
        if (
            isinstance(condition, Mapping)
            and condition.get("type") == "SoftwareEmulation"
            and condition.get("status") == "True"
        ):
            return SoftwareEmulation(str(condition.get("reason") or ""), str(condition.get("message") or ""))
    return None


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
        # Kept for as long as the VMI runs here: the VMIs of a namespace share one string.
        namespace = sys.intern(namespace)
        pod_uid = launcher_pod_on(obj, self._node)
        domain = f"{namespace}_{name}"
        if pod_uid is None:
            # Running here but no launcher pod recorded: report it, as unknown, rather than hide it.
            return VMI(
                uid, namespace, name, LibvirtTarget("", domain, f"{uid}/no-pod"), software_emulation(obj)
            )
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
        return VMI(uid, namespace, name, target, software_emulation(obj))


def list_watch_options(settings: Settings, **selectors: Any) -> ListWatchOptions:
    """The loop's timings from the settings, with a resource's selectors."""
    return ListWatchOptions(
        relist_spread=settings.relist_spread,
        silence_timeout=settings.watch_silence_timeout,
        **selectors,
    )


def api_client_for(settings: Settings) -> Any:
    """A client for the cluster the settings point at: KUBECONFIG, else the pod's service account."""
    from kubernetes import client, config

    if settings.kubeconfig:
        return config.new_client_from_config(config_file=settings.kubeconfig)  # type: ignore[no-untyped-call]
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


class KubernetesVMISource:
    """This node's VMIs, kept in the tracker by a list-watch of ``virtualmachineinstances``."""

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        *,
        on_synced: Callable[[], None] = lambda: None,
        on_relist: Callable[[], None] = lambda: None,
        on_watch_restart: Callable[[str], None] = lambda reason: None,
        on_sync: Callable[[float], None] = lambda when: None,
        api_client: Any = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self._settings = settings
        self._sink = sink
        self._api_client = api_client
        self._interpret = VMIInterpreter(settings.node_name, settings.libvirt_uri, settings.pods_root)
        self._listing: dict[str, VMI] = {}  # the relist in progress
        self._listed = 0
        self._list_watch = ListWatch(
            VMI_RESOURCE,
            self,
            self._client,
            list_watch_options(
                settings, label_selector=f"{NODE_LABEL}={settings.node_name}", page_size=page_size
            ),
            on_synced=on_synced,
            on_relist=on_relist,
            on_watch_restart=on_watch_restart,
            on_sync=on_sync,
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def last_sync(self) -> float | None:
        return self._list_watch.last_sync

    @last_sync.setter
    def last_sync(self, value: float | None) -> None:
        self._list_watch.last_sync = value

    @property
    def last_error(self) -> str | None:
        """Why the last list or watch failed, for `detect`."""
        return self._list_watch.last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self._list_watch.last_error = value

    @property
    def synced(self) -> bool:
        return self._list_watch.synced

    @property
    def _resource_version(self) -> str | None:
        return self._list_watch.resource_version

    def start(self) -> None:
        self._list_watch.start("vmi-watch")

    def stop(self) -> None:
        self._list_watch.stop()

    def relist(self) -> None:
        """List every VMI of this node (all pages) and reconcile the tracker with it."""
        self._list_watch.relist()

    def _client(self) -> Any:
        if self._api_client is None:
            self._api_client = api_client_for(self._settings)
        return self._api_client

    # ------------------------------------------------------------------ ListWatchHandler

    def relist_started(self) -> None:
        # Pages are turned into VMIs as they arrive: a full VMI object is ~20 KB of JSON, and
        # holding thousands of them at once would raise the process's memory high-water mark.
        self._listing, self._listed = {}, 0

    def listed(self, obj: Mapping[str, Any]) -> None:
        self._listed += 1
        vmi = self._interpret_safely(obj)
        if vmi is not None:
            self._listing[vmi.key] = vmi

    def relist_done(self) -> None:
        reported, self._listing = self._listing, {}
        self._sink.replace_all(reported.values())
        log.debug(
            "listed %d VMIs on %s, %d running here", self._listed, self._settings.node_name, len(reported)
        )

    def changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        if event_type == "DELETED":
            metadata = obj.get("metadata")
            uid = metadata.get("uid") if isinstance(metadata, Mapping) else None
            if isinstance(uid, str):
                self._sink.remove(uid)
        else:
            self._upsert(obj)

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
        if vmi is not None:
            self._sink.upsert(vmi)
            return
        # Not (or no longer) to be reported here: stopped, migrated away, or unreadable. The
        # tracker releases its launcher once nothing uses it any more.
        metadata = obj.get("metadata")
        uid = metadata.get("uid") if isinstance(metadata, Mapping) else None
        if isinstance(uid, str):
            self._sink.remove(uid)
