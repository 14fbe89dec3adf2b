"""The OpenTelemetry resource: which agent is reporting, with the operator's values first.

Precedence, highest first (README "Resource attributes"): ``OTEL_SERVICE_NAME``; every attribute of
``OTEL_RESOURCE_ATTRIBUTES``; what the agent detects (``service.name``, ``service.version``,
``k8s.node.name``, ``host.name``, a stable ``service.instance.id``); the SDK's own attributes and
detectors. The SDK's ``Resource.create(attributes)`` merges code *over* the environment, so an
operator could not rename the agent: the layers are merged here in that order instead.
``service.instance.id`` survives restarts (else each restart starts new series in an OTLP backend):
``<namespace>.<pod>.<container>`` in a pod, as the semantic conventions recipe for Kubernetes
says, else a UUID version 5 of the host name and the libvirt URI.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Mapping

from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.util.types import AttributeValue

from otel_vmi_hv import __version__
from otel_vmi_hv.config import Settings

# Semantic-convention names (opentelemetry-semantic-conventions; tests/unit/test_resource.py checks
# them against the installed package, whose Kubernetes names are still in its incubating module).
SERVICE_NAME = "service.name"
SERVICE_VERSION = "service.version"
SERVICE_INSTANCE_ID = "service.instance.id"
HOST_NAME = "host.name"
K8S_NODE_NAME = "k8s.node.name"
K8S_NAMESPACE_NAME = "k8s.namespace.name"
K8S_POD_NAME = "k8s.pod.name"
K8S_POD_UID = "k8s.pod.uid"
K8S_CONTAINER_NAME = "k8s.container.name"
K8S_DAEMONSET_NAME = "k8s.daemonset.name"

# "SHOULD use the following UUID as the namespace" for a service.instance.id derived from an inherent
# id (semantic conventions, service attributes).
INSTANCE_ID_NAMESPACE = uuid.UUID("4d63009a-8d0f-11ee-aad7-4c796ed8e320")


def build_resource(settings: Settings, host_name: str | None = None) -> Resource:
    """The resource of every metric the agent exports (``host_name``: this host's, by default)."""
    sdk = Resource.create()  # telemetry.sdk.*, configured detectors (and a random instance id, replaced)
    operator = OTELResourceDetector().detect()  # OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME
    detected = detected_attributes(settings, operator.attributes, host_name or socket.gethostname())
    return sdk.merge(Resource(detected)).merge(operator)


def detected_attributes(
    settings: Settings, operator: Mapping[str, AttributeValue], host_name: str
) -> dict[str, AttributeValue]:
    """What the agent knows about itself, for the attributes the operator did not set.

    In a pod (the operator's attributes name it) the container's host name is the pod's name, which
    ``k8s.pod.name`` already carries: ``host.name`` is then the node's name, the host this node agent
    reports for.
    """
    in_pod = bool(operator.get(K8S_POD_NAME))
    host = str(operator.get(HOST_NAME) or (settings.node_name if in_pod else host_name))
    return {
        SERVICE_NAME: settings.service_name,
        SERVICE_VERSION: __version__,
        K8S_NODE_NAME: settings.node_name,
        HOST_NAME: host,
        SERVICE_INSTANCE_ID: instance_id(operator, host, settings.libvirt_uri),
    }


def instance_id(operator: Mapping[str, AttributeValue], host: str, libvirt_uri: str) -> str:
    """Stable across restarts: the pod's container in Kubernetes, else this host and libvirt URI."""
    pod_keys = (K8S_NAMESPACE_NAME, K8S_POD_NAME, K8S_CONTAINER_NAME)
    pod_parts = [str(operator.get(key) or "") for key in pod_keys]
    if all(pod_parts):
        return ".".join(pod_parts)
    # Host names hold no space and the URI was refused with one: the pair maps to one name.
    return str(uuid.uuid5(INSTANCE_ID_NAMESPACE, f"{host} {libvirt_uri}"))
