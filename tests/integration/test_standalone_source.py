"""Standalone mode in process, on libvirt's shared test:///default driver, which emits real events."""

from __future__ import annotations

import inspect
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest

from otel_vmi_hv.agent import Agent
from otel_vmi_hv.config import load_settings
from tests.agent_process import wait_until
from tests.exposition import info_series, parse_samples

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


def _start_agent() -> Agent:
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
    return running


@pytest.fixture
def agent() -> Iterator[Agent]:
    running = _start_agent()
    yield running
    running.stop(budget=2)


def _metrics_body(agent: Agent) -> str:
    """The /metrics body of the in-process agent (the one place reaching into it)."""
    assert agent.telemetry is not None
    return agent.telemetry.scrape().body.decode()


def _count_libvirt_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count, from now on, every call made on a libvirt connection or domain, by method name.

    Patched on libvirt-python's own classes, so no part of the agent escapes it.
    """
    calls: Counter[str] = Counter()

    def counting(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return method(*args, **kwargs)

        return counted

    for cls in (libvirt.virConnect, libvirt.virDomain):
        for name, method in list(vars(cls).items()):
            if inspect.isfunction(method) and not name.startswith("_"):
                monkeypatch.setattr(cls, name, counting(name, method))
    return calls


def _count_detections(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count, per domain name, the XMLDesc calls that read a domain's type, from now on.

    Patched on libvirt-python's own ``virDomain`` class, so it sees every detection through
    libvirt whichever part of the agent makes it.
    """
    calls: Counter[str] = Counter()
    xml_desc = libvirt.virDomain.XMLDesc

    def counted(domain: libvirt.virDomain, flags: int = 0) -> str:
        calls[domain.name()] += 1
        return str(xml_desc(domain, flags))

    monkeypatch.setattr(libvirt.virDomain, "XMLDesc", counted)
    return calls


def _series(agent: Agent) -> dict[tuple[str, str], str]:
    return {key: labels["hypervisor_type"] for key, labels in info_series(_metrics_body(agent)).items()}


def _detections(agent: Agent) -> float:
    """How many detections have finished: the count of the detection-duration histogram."""
    return sum(
        count
        for _, count in parse_samples(_metrics_body(agent), "otel_vmi_hv_detection_duration_seconds_count")
    )


def _pending(agent: Agent) -> float:
    states = {labels["state"]: v for labels, v in parse_samples(_metrics_body(agent), "otel_vmi_hv_vmis")}
    return states.get("pending", 0.0)


def test_started_domain_appears_and_destroyed_one_disappears(agent: Agent, admin: libvirt.virConnect) -> None:
    wait_until(lambda: _series(agent) == {("", "test"): "test"}, 5, "the driver's own domain")
    domain = admin.createXML(_domain_xml("tenant-a_vm-1", "qemu"), 0)
    wait_until(lambda: _series(agent).get(("tenant-a", "vm-1")) == "qemu-tcg", 5, "the new domain's series")
    domain.destroy()
    wait_until(lambda: ("tenant-a", "vm-1") not in _series(agent), 5, "the destroyed domain to disappear")
    assert _series(agent) == {("", "test"): "test"}


def test_scrapes_make_no_libvirt_calls(
    agent: Agent, admin: libvirt.virConnect, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin.createXML(_domain_xml("default_steady", "kvm"), 0)
    wait_until(lambda: ("default", "steady") in _series(agent), 5, "the domain's series")
    wait_until(lambda: _pending(agent) == 0, 5, "no detection pending")
    calls = _count_libvirt_calls(monkeypatch)
    for _ in range(20):
        _series(agent)
    assert calls == Counter()
    admin.createXML(_domain_xml("default_counted", "kvm"), 0)  # the counting itself works
    wait_until(lambda: ("default", "counted") in _series(agent), 5, "the next domain's series")
    assert calls["listAllDomains"] >= 1 and calls["XMLDesc"] >= 1


def test_each_domain_lifetime_is_detected_once(
    agent: Agent, admin: libvirt.virConnect, monkeypatch: pytest.MonkeyPatch
) -> None:
    wait_until(lambda: _series(agent) == {("", "test"): "test"}, 5, "the driver's own domain")
    wait_until(lambda: _pending(agent) == 0, 5, "no detection pending")
    calls = _count_detections(monkeypatch)
    before = _detections(agent)
    for index in range(5):
        admin.createXML(_domain_xml(f"batch_vm-{index}", "kvm"), 0)
    wait_until(lambda: sum(1 for ns, _ in _series(agent) if ns == "batch") == 5, 5, "five series")
    # Five lifecycle events, each followed by a listing: none may lead to a second detection. A
    # last domain started afterwards is detected after everything the five events caused.
    admin.createXML(_domain_xml("batch_last", "kvm"), 0)
    wait_until(lambda: ("batch", "last") in _series(agent), 5, "the last domain")
    wait_until(lambda: _pending(agent) == 0, 5, "no detection pending")
    assert dict(calls) == {f"batch_vm-{i}": 1 for i in range(5)} | {"batch_last": 1}
    assert _detections(agent) - before == 6, "one detection recorded per domain"


def test_restarted_domain_with_the_same_name_is_detected_again(
    agent: Agent, admin: libvirt.virConnect
) -> None:
    domain = admin.createXML(_domain_xml("default_phoenix", "qemu"), 0)
    wait_until(lambda: _series(agent).get(("default", "phoenix")) == "qemu-tcg", 5, "first lifetime")
    domain.destroy()
    wait_until(lambda: ("default", "phoenix") not in _series(agent), 5, "the stopped domain to go")
    admin.createXML(_domain_xml("default_phoenix", "kvm"), 0)
    wait_until(lambda: _series(agent).get(("default", "phoenix")) == "kvm", 5, "second lifetime as kvm")


def test_agent_never_opens_a_read_write_connection(
    admin: libvirt.virConnect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read-write entry point of libvirt-python refuses: the agent must work all the same."""
    admin.createXML(_domain_xml("default_victim", "kvm"), 0)
    refused: list[str] = []

    def refuse(uri: str | None = None, *args: object) -> None:
        refused.append(str(uri))
        raise libvirt.libvirtError(f"read-write connection to {uri} refused by the test")

    monkeypatch.setattr(libvirt, "open", refuse)
    monkeypatch.setattr(libvirt, "openAuth", refuse)
    running = _start_agent()
    try:
        wait_until(lambda: _series(running).get(("default", "victim")) == "kvm", 5, "the domain's series")
    finally:
        running.stop(budget=2)
    assert refused == []
