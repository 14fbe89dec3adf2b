"""Standalone mode in process, on libvirt's shared test:///default driver, which emits real events."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import libvirt
import pytest

from otel_vmi_hv.agent import Agent
from otel_vmi_hv.config import load_settings
from tests.agent_process import wait_until
from tests.exposition import info_series

URI = "test:///default"


def _domain_xml(name: str, virt_type: str) -> str:
    return (
        f"<domain type='{virt_type}'><name>{name}</name><uuid>{uuid.uuid4()}</uuid>"
        "<memory>1024</memory><os><type>hvm</type></os></domain>"
    )


@pytest.fixture
def admin() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(URI)
    yield conn
    for domain in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        if domain.name() != "test":
            domain.destroy()
    conn.close()


@pytest.fixture
def agent() -> Iterator[Agent]:
    settings = load_settings(
        {
            "OTEL_VMI_HV_SOURCE": "libvirt",
            "OTEL_VMI_HV_LIBVIRT_URI": URI,
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": "0",
            "OTEL_VMI_HV_NODE_NAME": "node-a",
            "OTEL_VMI_HV_RESYNC_INTERVAL": "1h",  # only lifecycle events can make changes visible
        }
    )
    running = Agent(settings)
    running.start()
    assert running.synced.wait(10)
    yield running
    running.stop(budget=2)


def _series(agent: Agent) -> dict[tuple[str, str], str]:
    assert agent.telemetry is not None
    body = agent.telemetry.render_prometheus().decode()
    return {key: labels["hypervisor_type"] for key, labels in info_series(body).items()}


def test_started_domain_appears_and_destroyed_one_disappears(agent: Agent, admin: libvirt.virConnect) -> None:
    wait_until(lambda: _series(agent) == {("", "test"): "test"}, 5, "the driver's own domain")
    domain = admin.createXML(_domain_xml("tenant-a_vm-1", "qemu"), 0)
    wait_until(lambda: _series(agent).get(("tenant-a", "vm-1")) == "qemu-tcg", 5, "the new domain's series")
    domain.destroy()
    wait_until(lambda: ("tenant-a", "vm-1") not in _series(agent), 5, "the destroyed domain to disappear")
    assert _series(agent) == {("", "test"): "test"}


def test_scrapes_make_no_libvirt_calls(agent: Agent, admin: libvirt.virConnect) -> None:
    admin.createXML(_domain_xml("default_steady", "kvm"), 0)
    wait_until(lambda: ("default", "steady") in _series(agent), 5, "the domain's series")
    calls = agent.libvirt.calls_made
    for _ in range(20):
        _series(agent)
    assert agent.libvirt.calls_made == calls


def test_each_domain_lifetime_is_detected_once(agent: Agent, admin: libvirt.virConnect) -> None:
    before = agent.libvirt.calls_made
    for index in range(5):
        admin.createXML(_domain_xml(f"batch_vm-{index}", "kvm"), 0)
    wait_until(lambda: sum(1 for ns, _ in _series(agent) if ns == "batch") == 5, 5, "five series")
    assert agent.tracker.wait_idle(5)
    # One XMLDesc per domain, plus the listings each lifecycle event triggers (at most one per event).
    detections = sum(
        1
        for vmi, detection in agent.tracker.detections()
        if vmi.namespace == "batch" and detection is not None
    )
    assert detections == 5
    assert agent.libvirt.calls_made - before <= 5 + 5


def test_restarted_domain_with_the_same_name_is_detected_again(
    agent: Agent, admin: libvirt.virConnect
) -> None:
    domain = admin.createXML(_domain_xml("default_phoenix", "qemu"), 0)
    wait_until(lambda: _series(agent).get(("default", "phoenix")) == "qemu-tcg", 5, "first lifetime")
    domain.destroy()
    wait_until(lambda: ("default", "phoenix") not in _series(agent), 5, "the stopped domain to go")
    admin.createXML(_domain_xml("default_phoenix", "kvm"), 0)
    wait_until(lambda: _series(agent).get(("default", "phoenix")) == "kvm", 5, "second lifetime as kvm")


def test_agent_connection_is_read_only(agent: Agent, admin: libvirt.virConnect) -> None:
    admin.createXML(_domain_xml("default_victim", "kvm"), 0)
    wait_until(lambda: ("default", "victim") in _series(agent), 5, "the domain's series")
    conn = agent.libvirt._daemons[URI].conn
    with pytest.raises(libvirt.libvirtError) as refused:
        conn.lookupByName("default_victim").destroy()
    assert refused.value.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED
