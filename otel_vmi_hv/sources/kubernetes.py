"""This node's VMIs from the Kubernetes API, kept in the tracker by a list-watch (``list_watch.py``).

CRDs cannot be field-selected on ``status.nodeName``, so, like virt-handler, the watch uses the
label ``kubevirt.io/nodeName=<node>``, which KubeVirt keeps equal to ``status.nodeName`` (it
switches when a live migration completes). A relist replaces the tracker's whole set (VMIs deleted
meanwhile go, nothing is duplicated); each VMI object becomes the little the tracker keeps as soon
as it is decoded, so a listing of thousands never exists whole.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from otel_vmi_hv.config import Settings
from otel_vmi_hv.fields import field, items, mapping, text
from otel_vmi_hv.interfaces import Recorder, Sink
from otel_vmi_hv.model import VMI, LibvirtTarget, SoftwareEmulation
from otel_vmi_hv.sources.list_watch import ListWatch, ListWatchOptions, Resource

log = logging.getLogger(__name__)

# Pod UIDs are UUIDs; anything else is refused before it becomes part of a path.
_POD_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def launcher_pod_on(vmi: Mapping[str, Any], node: str) -> str | None:
    """UID of the VMI's launcher pod on ``node``: the key of status.activePods whose value is it."""
    active = mapping(vmi, "status", "activePods").items()
    pods = sorted(uid for uid, at in active if at == node and _POD_UID.fullmatch(uid))  # JSON keys: str
    return pods[0] if pods else None


def software_emulation(vmi: Mapping[str, Any]) -> SoftwareEmulation | None:
    """The VMI's ``SoftwareEmulation`` condition when its status is True (virt-handler sets it for
    cross-architecture guests, reason ``CrossArchitectureEmulation``)."""
    for condition in items(vmi, "status", "conditions"):
        if field(condition, "type") == "SoftwareEmulation" and field(condition, "status") == "True":
            return SoftwareEmulation(text(condition, "reason") or "", text(condition, "message") or "")
    return None


class VMIInterpreter:
    """Turns a VMI object into what the tracker needs, or None when it must not be reported."""

    def __init__(self, node: str, uri_template: str, pods_root: str) -> None:
        self._node = node
        self._template = uri_template
        self._pods_root = pods_root.rstrip("/") or "/"

    def __call__(self, obj: Mapping[str, Any]) -> VMI | None:
        uid, namespace, name = (text(obj, "metadata", key) for key in ("uid", "namespace", "name"))
        phase, node = field(obj, "status", "phase"), field(obj, "status", "nodeName")
        if not (uid and namespace and name) or phase != "Running" or node != self._node:
            return None
        # Kept for as long as the VMI runs here: the VMIs of a namespace share one string.
        namespace = sys.intern(namespace)
        domain = f"{namespace}_{name}"
        pod_uid = launcher_pod_on(obj, self._node)
        if pod_uid is None:
            # Running here but no launcher pod recorded: report it, as unknown, rather than hide it.
            target = LibvirtTarget("", domain, f"{uid}/no-pod")
        else:
            # Non-root launchers (runtimeUser 107) run a session daemon, root ones (0 or absent) a system one.
            user = field(obj, "status", "runtimeUser")
            mode = "session" if type(user) is int and user != 0 else "system"
            uri = self._template.format(
                pod_uid=pod_uid,
                vmi_uid=uid,
                namespace=namespace,
                name=name,
                mode=mode,
                pods_root=self._pods_root,
            )
            empty_dirs = f"{self._pods_root}/{pod_uid}/volumes/kubernetes.io~empty-dir"
            xml = f"{empty_dirs}/private/libvirt/qemu/{domain}.xml"
            target = LibvirtTarget(uri, domain, pod_uid, xml, pod_uid)
        return VMI(uid, namespace, name, target, software_emulation(obj))


def list_watch_options(settings: Settings, **selectors: Any) -> ListWatchOptions:
    """The loop's timings from the settings, with a resource's selectors."""
    return ListWatchOptions(settings.relist_spread, settings.watch_silence_timeout, **selectors)


def api_client_for(settings: Settings) -> Any:
    """A client for the cluster the settings point at: KUBECONFIG, else the pod's service account.

    urllib3's own retries are off: every caller backs off by itself, and retries under that backoff
    would only multiply the requests (and log a warning each).
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    configuration.retries = False
    if settings.kubeconfig:
        config.load_kube_config(config_file=settings.kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


class KubernetesVMISource:
    """This node's VMIs, kept in the tracker by a list-watch of ``virtualmachineinstances``."""

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        *,
        metrics: Recorder,
        on_synced: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._sink = sink
        self._on_synced = on_synced
        self._interpret = VMIInterpreter(settings.node_name, settings.libvirt_uri, settings.pods_root)
        self._listing: dict[str, VMI] = {}  # the relist in progress
        selector = f"kubevirt.io/nodeName={settings.node_name}"
        self._list_watch = ListWatch(
            Resource("virtualmachineinstances", "kubevirt.io"),
            self,
            functools.cache(lambda: api_client_for(settings)),  # made on first use
            list_watch_options(settings, label_selector=selector),
            metrics,
        )

    @property
    def last_error(self) -> str | None:
        """Why the last list or watch failed, for `detect`."""
        return self._list_watch.last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:  # the agent's Source protocol declares it settable
        self._list_watch.last_error = value

    def start(self) -> None:
        self._list_watch.start("vmi-watch")

    def stop(self) -> None:
        self._list_watch.stop()

    # ------------------------------------------------------------------ ListWatchHandler

    def relist_started(self) -> None:
        self._listing = {}

    def listed(self, obj: Mapping[str, Any]) -> None:
        vmi = self._interpret(obj)
        if vmi is not None:
            self._listing[vmi.key] = vmi

    def relist_done(self) -> None:
        reported, self._listing = self._listing, {}
        self._sink.replace_all(reported.values())
        log.debug("%d VMIs running on %s", len(reported), self._settings.node_name)
        self._on_synced()

    def changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        vmi = None if event_type == "DELETED" else self._interpret(obj)
        if vmi is not None:
            self._sink.upsert(vmi)
        elif uid := text(obj, "metadata", "uid"):
            # Deleted, or no longer to be reported here (stopped, migrated away, unreadable): the
            # tracker releases its launcher once nothing uses it any more.
            self._sink.remove(uid)

    def watching(self) -> None:
        pass

    def failed(self, status: int | None, reason: str) -> None:
        pass
