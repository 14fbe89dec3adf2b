"""The exported resource: the operator's attributes win, the agent fills the rest, the instance id is stable.

The resource is built from the process environment (the SDK's detectors read it), so each case sets
the variables for real and builds the settings from them, as the CLI does.
"""

from __future__ import annotations

import os
import uuid

import pytest
from opentelemetry.sdk.resources import Resource

from otel_vmi_hv import __version__
from otel_vmi_hv.config import Settings, load_settings
from otel_vmi_hv.export import resource as agent_resource
from otel_vmi_hv.export.resource import build_resource

HOST = "plain-host"  # the host name the agent sees (passed in, so the cases do not depend on this machine)
NODE = "worker-7"
POD = "k8s.namespace.name=monitoring,k8s.pod.name=otel-vmi-hv-x7k2p,k8s.container.name=agent"


def _resource(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> tuple[Settings, Resource]:
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    for name, value in {"OTEL_VMI_HV_NODE_NAME": NODE, "OTEL_VMI_HV_SOURCE": "libvirt", **env}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(os.environ)
    return settings, build_resource(settings, host_name=HOST)


# (environment, attributes the resource must carry); the first rows are the precedence table of the
# README's "Resource attributes".
PRECEDENCE = [
    pytest.param(
        {}, {"service.name": "otel-vmi-hv", "host.name": HOST, "k8s.node.name": NODE}, id="defaults"
    ),
    pytest.param(
        {"OTEL_RESOURCE_ATTRIBUTES": "service.name=fromattrs"}, {"service.name": "fromattrs"}, id="attrs"
    ),
    pytest.param(
        {"OTEL_SERVICE_NAME": "fromenv", "OTEL_RESOURCE_ATTRIBUTES": "service.name=fromattrs"},
        {"service.name": "fromenv"},
        id="service-name-variable-wins",
    ),
    pytest.param(
        {"OTEL_RESOURCE_ATTRIBUTES": "service.name=fromattrs,host.name=worker-1,k8s.node.name=zzz"},
        {"service.name": "fromattrs", "host.name": "worker-1", "k8s.node.name": "zzz"},
        id="issue-example",
    ),
    pytest.param(
        {"OTEL_RESOURCE_ATTRIBUTES": "service.version=9.9,service.instance.id=mine"},
        {"service.version": "9.9", "service.instance.id": "mine"},
        id="operator-version-and-instance",
    ),
    pytest.param(
        {"OTEL_RESOURCE_ATTRIBUTES": POD},
        {
            "service.instance.id": "monitoring.otel-vmi-hv-x7k2p.agent",
            "host.name": NODE,
            "k8s.node.name": NODE,
        },
        id="pod",
    ),
    pytest.param(
        {"OTEL_RESOURCE_ATTRIBUTES": POD + ",host.name=metal-7,service.instance.id=mine"},
        {"service.instance.id": "mine", "host.name": "metal-7"},
        id="pod-with-operator-host-and-instance",
    ),
    pytest.param(
        {
            "OTEL_RESOURCE_ATTRIBUTES": "k8s.cluster.name=prod%2Ceu",
            "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "os",
        },
        {"k8s.cluster.name": "prod,eu", "os.type": "linux", "service.name": "otel-vmi-hv"},
        id="extra-attribute-and-detector",
    ),
]


@pytest.mark.parametrize(("env", "expected"), PRECEDENCE)
def test_precedence(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: dict[str, str]) -> None:
    settings, resource = _resource(monkeypatch, env)
    attributes = dict(resource.attributes)
    assert {key: attributes.get(key) for key in expected} == expected
    assert attributes["telemetry.sdk.language"] == "python", "the SDK's own attributes are kept"
    assert attributes["service.name"] == settings.service_name, "check-config shows the exported name"
    if "service.version" not in expected:
        assert attributes["service.version"] == __version__


def test_instance_id_outside_a_pod_is_a_uuid5_of_host_and_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stable (not the SDK's random UUID v4) and distinct per host and per libvirt URI."""
    ids = {}
    for host, uri in [(HOST, "qemu:///system"), (HOST, "qemu:///session"), ("other-host", "qemu:///system")]:
        settings, _ = _resource(monkeypatch, {"OTEL_VMI_HV_LIBVIRT_URI": uri})
        first = build_resource(settings, host_name=host).attributes["service.instance.id"]
        assert build_resource(settings, host_name=host).attributes["service.instance.id"] == first
        ids[(host, uri)] = str(first)
    assert len(set(ids.values())) == 3
    assert {uuid.UUID(value).version for value in ids.values()} == {5}


def test_instance_id_follows_the_operators_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, resource = _resource(monkeypatch, {"OTEL_RESOURCE_ATTRIBUTES": "host.name=worker-1"})
    other = build_resource(settings, host_name="container-3f2a").attributes["service.instance.id"]
    assert resource.attributes["service.instance.id"] == other, "the detected host name is not used"


def test_a_pod_without_its_container_name_falls_back_to_the_host_id(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "k8s.namespace.name=monitoring,k8s.pod.name=otel-vmi-hv-x7k2p"}
    _, resource = _resource(monkeypatch, env)
    assert uuid.UUID(str(resource.attributes["service.instance.id"])).version == 5


def test_another_pod_gets_another_instance_id(monkeypatch: pytest.MonkeyPatch) -> None:
    _, first = _resource(monkeypatch, {"OTEL_RESOURCE_ATTRIBUTES": POD})
    _, replaced = _resource(monkeypatch, {"OTEL_RESOURCE_ATTRIBUTES": POD.replace("x7k2p", "q9w4z")})
    assert first.attributes["service.instance.id"] != replaced.attributes["service.instance.id"]


def test_attribute_names_are_the_semantic_conventions() -> None:
    from opentelemetry.semconv.resource import ResourceAttributes as Semconv

    for name in (
        "SERVICE_NAME", "SERVICE_VERSION", "SERVICE_INSTANCE_ID", "HOST_NAME", "K8S_NODE_NAME",
        "K8S_NAMESPACE_NAME", "K8S_POD_NAME", "K8S_POD_UID", "K8S_CONTAINER_NAME", "K8S_DAEMONSET_NAME",
    ):  # fmt: skip
        assert getattr(agent_resource, name) == getattr(Semconv, name), name
