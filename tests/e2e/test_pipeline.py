"""The whole pipeline as users run it: a real libvirt daemon running real QEMU domains under TCG,
the agent as a subprocess configured only by environment variables, the real Prometheus server
scraping it, and a real OTLP receiver (rotel) getting its pushes."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator, Mapping

import pytest

from tests.agent_process import AgentProcess, demo_uri, wait_until
from tests.downward_api import agent_container, container_environment, daemonset
from tests.exposition import info_series, parse_samples
from tests.harness.libvirtd import LibvirtDaemon, SystemLibvirtDaemon
from tests.harness.otlp_receiver import RotelReceiver
from tests.harness.prometheus import PrometheusServer, promtool_check_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.libvirtd]
INFO = "kubevirt_vmi_hypervisor_info"
FOUR = {"namespace", "name", "node", "hypervisor_type"}
EMULATION = "otel_vmi_hv_vmi_emulation_info"
KUBERNETES_ATTRIBUTES = (
    *("k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.daemonset.name", "k8s.container.name"),
    "k8s.node.name",
)
ACCELERATOR = "otel_vmi_hv_node_accelerator_available"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def domains(libvirtd: LibvirtDaemon) -> Iterator[Callable[..., str]]:
    """Define (and start) domains on the shared daemon; undefined afterwards."""
    made: list[str] = []

    def make(namespace: str, name: str, start: bool = True) -> str:
        domain = f"{namespace}_{name}"
        libvirtd.define(domain, start=start, paused=True)
        made.append(domain)
        return domain

    yield make
    for domain in made:
        libvirtd.undefine(domain)


def _agent(uri: str, receiver: RotelReceiver, protocol: str) -> AgentProcess:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    return AgentProcess(
        {
            "OTEL_VMI_HV_SOURCE": "libvirt",
            "OTEL_VMI_HV_LIBVIRT_URI": uri,
            "OTEL_VMI_HV_NODE_NAME": "e2e-node",
            "OTEL_METRICS_EXPORTER": "prometheus,otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_VMI_HV_RESYNC_INTERVAL": "1h",  # changes must come from lifecycle events
        }
    )


def _otlp_view(receiver: RotelReceiver) -> dict[tuple[str, str], dict[str, object]] | None:
    """The info points of the latest complete export, by (namespace, name)."""
    export = receiver.latest_export(INFO)
    if export is None:
        return None
    view: dict[tuple[str, str], dict[str, object]] = {}
    for point in export.of(INFO):
        assert set(point.attributes) == FOUR, point.attributes
        assert point.value == 1
        key = (str(point.attributes["namespace"]), str(point.attributes["name"]))
        assert key not in view, f"duplicate point for {key}"
        view[key] = dict(point.attributes)
    return view


def _types(view: dict[tuple[str, str], dict[str, object]] | None) -> dict[tuple[str, str], object]:
    return {key: labels["hypervisor_type"] for key, labels in (view or {}).items()}


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_running_domains_reach_metrics_prometheus_and_otlp(
    protocol: str,
    libvirtd: LibvirtDaemon,
    domains: Callable[..., str],
    otlp_receiver: RotelReceiver,
    prometheus_factory: Callable[..., PrometheusServer],
) -> None:
    namespace = _unique("e2e")
    for name in ("web", "db", "cache"):
        domains(namespace, name)
    domains(namespace, "stopped", start=False)  # defined but inactive: never reported
    expected = {(namespace, name): "qemu-tcg" for name in ("web", "db", "cache")}

    def ours(types: dict[tuple[str, str], object]) -> dict[tuple[str, str], object]:
        return {key: value for key, value in types.items() if key[0] == namespace}

    with _agent(libvirtd.uri, otlp_receiver, protocol) as agent:
        agent.wait_ready()
        wait_until(
            lambda: (
                ours({k: v["hypervisor_type"] for k, v in info_series(agent.metrics()).items()}) == expected
            ),
            15,
            "/metrics to list the three running domains",
        )
        body = agent.metrics()
        for labels in info_series(body).values():
            assert set(labels) == FOUR and labels["node"] == "e2e-node"
        rc, output = promtool_check_metrics(body)
        assert rc == 0, output

        wait_until(
            lambda: ours(_types(_otlp_view(otlp_receiver))) == expected, 15, "the same points over OTLP"
        )
        export = otlp_receiver.latest_export(INFO)
        assert export is not None
        resource = export.of(INFO)[0].resource
        assert resource["service.name"] == "otel-vmi-hv"
        assert resource["k8s.node.name"] == "e2e-node"
        assert resource["host.name"] == socket.gethostname()
        assert uuid.UUID(str(resource["service.instance.id"])).version == 5  # derived, not random
        assert {p.attributes["node"] for p in export.of(INFO)} == {"e2e-node"}
        assert otlp_receiver.errors == []

        # Why they are emulated: the companion series, the same on both paths (the reason depends
        # on this host's /dev/kvm, so it is compared, not fixed).
        def reasons_in_metrics() -> set[tuple[str, str, str]]:
            return {
                (labels["namespace"], labels["name"], labels["reason"])
                for labels, _ in parse_samples(agent.metrics(), EMULATION)
                if labels["namespace"] == namespace
            }

        def reasons_over_otlp() -> set[tuple[str, str, str]]:
            latest = otlp_receiver.latest_export(EMULATION)
            points = latest.of(EMULATION) if latest is not None else []
            return {
                (str(p.attributes["namespace"]), str(p.attributes["name"]), str(p.attributes["reason"]))
                for p in points
                if p.attributes["namespace"] == namespace
            }

        in_metrics = reasons_in_metrics()
        assert {(ns, name) for ns, name, _ in in_metrics} == set(expected)
        assert {reason for _, _, reason in in_metrics} <= {"kvm_not_requested", "node_without_kvm"}
        wait_until(lambda: reasons_over_otlp() == in_metrics, 15, "the same reasons over OTLP")

        # The node's accelerator: on a plain host KVM, from the /dev/kvm probe; the same on both paths.
        def accelerator_over_otlp() -> dict[str, float]:
            latest = otlp_receiver.latest_export(ACCELERATOR)
            points = latest.of(ACCELERATOR) if latest is not None else []
            return {str(p.attributes["device"]): float(p.value or 0) for p in points}

        accelerator = {
            labels["device"]: value for labels, value in parse_samples(agent.metrics(), ACCELERATOR)
        }
        assert set(accelerator) == {"kvm"} and set(accelerator.values()) <= {0.0, 1.0}
        wait_until(lambda: accelerator_over_otlp() == accelerator, 15, "the same accelerator over OTLP")

        prometheus = prometheus_factory([f"127.0.0.1:{agent.port}"])
        query = f'{INFO}{{namespace="{namespace}"}}'
        result = prometheus.wait_for(query, lambda r: len(r) == 3, timeout=30)
        for sample in result:
            label_names = set(sample["metric"]) - {"__name__", "job", "instance"}
            assert label_names == FOUR
            assert sample["value"][1] == "1"
        # Prometheus asked for OpenMetrics first (its default Accept) and got it: only an OpenMetrics
        # body has _created lines, which it stores as series.
        prometheus.wait_for("otel_vmi_hv_detection_duration_seconds_created", bool, timeout=15)

        # A domain destroyed disappears from every output; one started later appears.
        libvirtd.destroy(f"{namespace}_db")
        domains(namespace, "late")
        expected.pop((namespace, "db"))
        expected[(namespace, "late")] = "qemu-tcg"
        wait_until(
            lambda: (
                ours({k: v["hypervisor_type"] for k, v in info_series(agent.metrics()).items()}) == expected
            ),
            15,
            "/metrics to follow the destroy and the start",
        )
        wait_until(lambda: ours(_types(_otlp_view(otlp_receiver))) == expected, 15, "OTLP to follow them")
        prometheus.wait_for(
            query,
            lambda r: {s["metric"]["name"] for s in r} == {"web", "cache", "late"},
            timeout=30,
        )


def _exported_resource(receiver: RotelReceiver, env: Mapping[str, str]) -> dict[str, object]:
    """Run the agent (demo node, OTLP only) until its first export reaches the receiver; the
    resource of that export."""
    after = max((export.index for export in receiver.exports()), default=-1)
    settings = {
        "OTEL_VMI_HV_SOURCE": "libvirt",
        "OTEL_VMI_HV_LIBVIRT_URI": demo_uri(),
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }
    with AgentProcess({**settings, **env}) as agent:
        try:
            export = receiver.wait_for_export(lambda e: bool(e.of(INFO)), timeout=20, after=after)
        except TimeoutError:
            raise AssertionError(f"no export; the agent said:\n{agent.output()}") from None
    assert receiver.errors == []
    return dict(export.of(INFO)[0].resource)


def test_operator_resource_attributes_win_over_the_agents(otlp_receiver: RotelReceiver) -> None:
    resource = _exported_resource(
        otlp_receiver,
        {
            "OTEL_VMI_HV_NODE_NAME": "e2e-node",
            "OTEL_RESOURCE_ATTRIBUTES": "service.name=fromattrs,host.name=worker-1,k8s.node.name=zzz",
        },
    )
    assert {k: resource[k] for k in ("service.name", "host.name", "k8s.node.name")} == {
        "service.name": "fromattrs",
        "host.name": "worker-1",
        "k8s.node.name": "zzz",
    }
    latest = otlp_receiver.latest_export(INFO)
    assert latest is not None
    nodes = {p.attributes["node"] for p in latest.of(INFO)}
    assert nodes == {"e2e-node"}, "the resource is identity only: the node label stays the agent's"


def test_daemonset_pod_keeps_its_instance_id_across_restarts(otlp_receiver: RotelReceiver) -> None:
    """The DaemonSet's own variables, as the kubelet expands them for one pod, twice (a container
    restart keeps the pod's name, namespace and uid)."""
    ds = daemonset()
    container = agent_container(ds)
    pod = {
        "metadata.name": "otel-vmi-hv-x7k2p",
        "metadata.namespace": "otel-vmi-hv",
        "metadata.uid": "0f6d7a52-3b1e-4c8e-9d4a-6f2b8e1c5a70",
        "spec.nodeName": "worker-3",
    }
    kubelet_env = container_environment(container, pod)
    identity = {
        name: value
        for name, value in kubelet_env.items()
        if name.startswith(("OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME"))
        or name == "OTEL_VMI_HV_NODE_NAME"
    }
    first = _exported_resource(otlp_receiver, identity)
    again = _exported_resource(otlp_receiver, identity)
    expected_id = f"otel-vmi-hv.otel-vmi-hv-x7k2p.{container['name']}"  # <namespace>.<pod>.<container>
    assert first["service.instance.id"] == again["service.instance.id"] == expected_id
    assert {key: first.get(key) for key in KUBERNETES_ATTRIBUTES} == {
        "k8s.namespace.name": "otel-vmi-hv",
        "k8s.pod.name": "otel-vmi-hv-x7k2p",
        "k8s.pod.uid": "0f6d7a52-3b1e-4c8e-9d4a-6f2b8e1c5a70",
        "k8s.daemonset.name": ds["metadata"]["name"],
        "k8s.container.name": container["name"],
        "k8s.node.name": "worker-3",
    }
    assert first["host.name"] == "worker-3", "in a pod the host is the node, not the pod's host name"


def test_plain_host_keeps_its_instance_id_across_restarts(otlp_receiver: RotelReceiver) -> None:
    first = _exported_resource(otlp_receiver, {})
    again = _exported_resource(otlp_receiver, {})
    assert first["host.name"] == socket.gethostname()
    assert first["service.instance.id"] == again["service.instance.id"]
    assert not any(key.startswith("k8s.") and key != "k8s.node.name" for key in first)


def test_real_kvm_domain_is_reported_as_kvm(system_libvirtd: SystemLibvirtDaemon) -> None:
    """Only where /dev/kvm works (the fixture skips with the probe's reason elsewhere)."""
    name = _unique("kvmtest")
    system_libvirtd.define(f"default_{name}", virt_type="kvm", paused=True)
    try:
        with AgentProcess(
            {"OTEL_VMI_HV_SOURCE": "libvirt", "OTEL_VMI_HV_LIBVIRT_URI": system_libvirtd.ro_uri}
        ) as agent:
            agent.wait_ready()
            wait_until(
                lambda: (
                    info_series(agent.metrics()).get(("default", name), {}).get("hypervisor_type") == "kvm"
                ),
                20,
                "the KVM domain reported as kvm",
            )
    finally:
        system_libvirtd.undefine(f"default_{name}")
