"""/metrics serves its last body again only while nothing it shows changed: each input changed in
turn (a VMI detected and removed, a libvirt connection state, an emulation fact, a self-metric, a
failed OTLP export) reaches the next scrape over HTTP, and an unchanged scrape is the same bytes
without a collection."""

from __future__ import annotations

import gzip
import http.client
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from otel_vmi_hv.agent import Agent
from otel_vmi_hv.config import load_settings
from otel_vmi_hv.detection.libvirt.daemons import LibvirtUnavailable
from otel_vmi_hv.emulation.host_facts import HostFacts
from tests.agent_process import free_port, wait_until
from tests.exposition import PROMETHEUS_3, count_collections, info_series, parse_samples

URI = "test:///default"


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Agent]:
    env = {
        "OTEL_VMI_HV_SOURCE": "libvirt",
        "OTEL_VMI_HV_LIBVIRT_URI": URI,
        "OTEL_METRICS_EXPORTER": "prometheus,otlp",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": "0",
        "OTEL_VMI_HV_NODE_NAME": "node-a",
        "OTEL_VMI_HV_RESYNC_INTERVAL": "1h",  # nothing changes unless the test changes it
        "OTEL_VMI_HV_KVM_DEVICE": str(tmp_path / "kvm"),  # missing: this host has no KVM
        # No Collector listens there; exports run only when the test flushes.
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
    }
    for name, value in env.items():  # the SDK's OTLP exporter reads the environment itself
        monkeypatch.setenv(name, value)
    running = Agent(load_settings(env))
    running.start()
    assert running.synced.wait(10)
    yield running
    running.stop(budget=2)


@pytest.fixture
def admin() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(URI)
    yield conn
    for domain in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        if domain.name() != "test":
            domain.destroy()
    conn.close()


def _scrape(agent: Agent) -> bytes:
    """What Prometheus 3 gets (OpenMetrics, gzip when large enough, a new connection), without the
    process metrics, which are read afresh at every scrape."""
    assert agent.http is not None
    connection = http.client.HTTPConnection("127.0.0.1", agent.http.port, timeout=10)
    try:
        connection.request("GET", "/metrics", headers={"Accept": PROMETHEUS_3, "Accept-Encoding": "gzip"})
        response = connection.getresponse()
        assert response.status == 200
        body = response.read()
        if response.getheader("Content-Encoding") == "gzip":  # small bodies are sent as they are
            body = gzip.decompress(body)
    finally:
        connection.close()
    return body[: body.index(b"# HELP process_")]


def _samples(agent: Agent, metric: str) -> dict[str, float]:
    """``metric``'s samples by their labels' values, joined, as the next scrape shows them."""
    body = _scrape(agent).decode()
    return {",".join(labels.values()): value for labels, value in parse_samples(body, metric)}


def _domain_xml(name: str) -> str:
    return (
        f"<domain type='qemu'><name>{name}</name><uuid>{uuid.uuid4()}</uuid>"
        "<memory>1024</memory><os><type>hvm</type></os></domain>"
    )


def test_each_input_reaches_the_next_scrape_and_an_unchanged_one_is_served_again(
    agent: Agent, admin: libvirt.virConnect, tmp_path: Path
) -> None:
    wait_until(lambda: ("", "test") in info_series(_scrape(agent).decode()), 10, "the driver's own domain")
    assert _samples(agent, "otel_vmi_hv_vmis").get("pending") == 0

    made = count_collections(agent)
    first = _scrape(agent)
    assert [_scrape(agent) for _ in range(3)] == [first] * 3, "unchanged: the same bytes"
    assert made == [], "unchanged: no collection"

    # A VMI detected, then removed (the tracker's snapshot).
    domain = admin.createXML(_domain_xml("tenant-a_vm-1"), 0)
    series = lambda: info_series(_scrape(agent).decode())  # noqa: E731
    wait_until(lambda: series().get(("tenant-a", "vm-1"), {}).get("hypervisor_type") == "qemu-tcg", 10, "new")
    # Its reason follows with the emulation facts' next pass (at most a few a second).
    explained = {"vm-1,tenant-a,node-a,node_without_kvm": 1}
    wait_until(lambda: _samples(agent, "otel_vmi_hv_vmi_emulation_info") == explained, 10, "its reason")
    domain.destroy()
    wait_until(lambda: ("tenant-a", "vm-1") not in series(), 10, "the destroyed domain gone")

    # A libvirt connection state: a daemon the agent cannot reach.
    with pytest.raises(LibvirtUnavailable):
        assert agent.libvirt is not None
        agent.libvirt.call(f"test://{tmp_path}/no-such-driver.xml", lambda conn: conn.getType())
    wait_until(
        lambda: _samples(agent, "otel_vmi_hv_libvirt_connections").get("disconnected") == 1,
        10,
        "disconnected",
    )

    # An emulation fact: the KVM device can no longer be probed at all.
    assert _samples(agent, "otel_vmi_hv_node_kvm_available") == {"": 0}
    (tmp_path / "kvm").mkdir()
    assert isinstance(agent.emulation, HostFacts)
    agent.emulation.refresh()
    wait_until(lambda: _samples(agent, "otel_vmi_hv_node_kvm_available") == {}, 10, "the fact unknown")

    # Self-metrics: a watch restart and an Event, as the other parts record them.
    agent.metrics.record_watch_restart("expired")
    wait_until(lambda: _samples(agent, "otel_vmi_hv_watch_restarts_total") == {"expired": 1}, 10, "restart")
    agent.metrics.record_event("written")
    wait_until(lambda: _samples(agent, "otel_vmi_hv_events_total") == {"written": 1}, 10, "the Event")

    # A failed OTLP export.
    assert agent.telemetry is not None
    agent.telemetry.meter_provider.force_flush(timeout_millis=5000)
    failures = "otel_vmi_hv_otlp_export_failures_total"
    wait_until(lambda: sum(_samples(agent, failures).values()) >= 1, 10, "the failed export counted")

    # Unchanged again: served from the cache.
    settled = _scrape(agent)
    made.clear()
    assert _scrape(agent) == settled and made == []
