"""What this node's Node and the KubeVirt CR say about acceleration, read from list-watched objects.

The Node's allocatable ``devices.kubevirt.io/<device>`` is how virt-handler's device plugin
advertises a hypervisor device; the CR's ``developerConfiguration.useEmulation`` says whether
launchers may run without one. ``ObjectCache`` keeps one list-watch's objects and its last failure,
so a missing RBAC rule becomes evidence that names the rule.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from otel_vmi_hv.emulation.reasons import DEVICE_RESOURCE_PREFIX, EmulationPolicy, NodeAccelerator
from otel_vmi_hv.fields import field, text
from otel_vmi_hv.sources.list_watch import Resource

NODES = Resource("nodes")
KUBEVIRTS = Resource("kubevirts", "kubevirt.io", "v1")
USE_EMULATION = "spec.configuration.developerConfiguration.useEmulation"
Failure = tuple[int | None, str]  # (HTTP status or None, reason)


def failure_text(resource: Resource, failure: Failure) -> str:
    status, reason = failure
    if status == 403:
        return f"forbidden: the agent's ClusterRole needs get, list and watch on {resource.name}"
    if status == 404:
        return f"not served by the API server ({resource.name} missing: is KubeVirt installed?)"
    return f"cannot be read: {reason}"


def node_device_from(node: Mapping[str, Any] | None, node_name: str, device: str | None) -> NodeAccelerator:
    """A device as virt-handler's device plugin advertises it: ``devices.kubevirt.io/<device>`` > 0."""
    if device is None:
        return NodeAccelerator(None, None, f"node {node_name}: no device to check for this hypervisor")
    if node is None:
        return NodeAccelerator(
            device, None, f"node {node_name} is not in the API (no Node object of that name)"
        )
    resource = f"{DEVICE_RESOURCE_PREFIX}{device}"
    raw = field(node, "status", "allocatable", resource)
    if raw is None:
        return NodeAccelerator(device, False, f"node {node_name} has no allocatable {resource}")
    from kubernetes.utils import parse_quantity

    try:
        amount = parse_quantity(raw)  # type: ignore[no-untyped-call]
        if not amount.is_finite():
            raise ValueError(raw)
    except (ValueError, TypeError, ArithmeticError):
        return NodeAccelerator(
            device, None, f"node {node_name} allocatable {resource}={raw!r} is not a quantity"
        )
    return NodeAccelerator(device, amount > 0, f"node {node_name} allocatable {resource}={raw}")


def oldest(kubevirts: list[Mapping[str, Any]]) -> tuple[Mapping[str, Any], str]:
    """The cluster's KubeVirt CR (the oldest, should there be several) and its ``namespace/name``."""
    cr = min(kubevirts, key=lambda obj: text(obj, "metadata", "creationTimestamp") or "")
    return cr, f"{text(cr, 'metadata', 'namespace')}/{text(cr, 'metadata', 'name')}"


def emulation_policy_from(kubevirts: list[Mapping[str, Any]]) -> EmulationPolicy:
    """``useEmulation`` of the cluster's KubeVirt CR."""
    if not kubevirts:
        return EmulationPolicy(None, "no KubeVirt CR (kubevirts.kubevirt.io) in the cluster")
    cr, name = oldest(kubevirts)
    value = field(cr, *USE_EMULATION.split("."))
    allowed = value is True
    shown = "true" if allowed else ("false" if value is False else "unset (false)")
    verb = "allows" if allowed else "does not allow"
    return EmulationPolicy(allowed, f"KubeVirt CR {name} {verb} emulation ({USE_EMULATION}: {shown})")


def _uid(obj: Mapping[str, Any]) -> str | None:
    return text(obj, "metadata", "uid") or text(obj, "metadata", "name")


class ObjectCache:
    """The objects of one list-watch, by uid, and its last failure; tells its owner after every change."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        self._objects: dict[str, Mapping[str, Any]] = {}
        self._listing: dict[str, Mapping[str, Any]] = {}
        self.synced = False
        self.failure: Failure | None = None
        self._lock = threading.Lock()

    def objects(self) -> list[Mapping[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def state(self) -> tuple[bool, Failure | None]:
        """(listed, the failure that makes its objects unusable, if any)."""
        with self._lock:
            synced, failure = self.synced, self.failure
        lasting = failure is not None and (failure[0] in (401, 403, 404) or not synced)
        return synced, failure if lasting else None

    def relist_started(self) -> None:
        self._listing = {}

    def listed(self, obj: Mapping[str, Any]) -> None:
        uid = _uid(obj)
        if uid is not None:
            self._listing[uid] = obj

    def relist_done(self) -> None:
        with self._lock:
            self._objects, self._listing = self._listing, {}
            self.synced, self.failure = True, None
        self._changed()

    def changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        uid = _uid(obj)
        if uid is None:
            return
        with self._lock:
            if event_type == "DELETED":
                self._objects.pop(uid, None)
            else:
                self._objects[uid] = obj
        self._changed()

    def watching(self) -> None:
        """A watch stream opened: an earlier failure (a 403 since fixed) is over."""
        with self._lock:
            failure, self.failure = self.failure, None
        if failure is not None:
            self._changed()

    def failed(self, status: int | None, reason: str) -> None:
        with self._lock:
            self.failure = (status, reason)
        self._changed()
