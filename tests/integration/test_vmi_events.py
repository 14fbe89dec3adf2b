"""Events on emulated VMIs, written through the real kubernetes client to the fake API server."""

from __future__ import annotations

import logging
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.emulation import vmi_events
from tests.agent_process import wait_until
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import NODE, make_kubevirt, make_node, make_vmi
from tests.integration.kube_env import Launchers, emulated_and_accelerated, running_agent, samples, series


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmi_events, "RETRY", Backoff(initial=0.1, maximum=0.5))


def _events(api: FakeKubeAPIServer) -> list[dict[str, Any]]:
    return api.objects(kind="Event")


def _results(agent: Any) -> dict[str, float]:
    return {labels["result"]: value for labels, value in samples(agent, "otel_vmi_hv_events_total")}


def test_one_event_per_emulated_vmi_and_reason_across_restarts(
    api: FakeKubeAPIServer, tmp_path: Path
) -> None:
    pods = tmp_path / "pods"
    emulated_and_accelerated(api, pods)
    vmi = api.get("ci", "runner")
    assert vmi is not None
    with running_agent(
        api, tmp_path, NODE, pods, OTEL_RESOURCE_ATTRIBUTES="k8s.pod.name=otel-vmi-hv-x1"
    ) as agent:
        wait_until(lambda: _results(agent).get("created") == 1, 10, "the Event created")
        (event,) = _events(api)
        assert event["involvedObject"] == {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "name": "runner",
            "namespace": "ci",
            "uid": vmi["metadata"]["uid"],
        }
        assert (event["type"], event["reason"]) == ("Warning", "SoftwareEmulation")
        assert "node_without_kvm" in event["message"] and "devices.kubevirt.io/kvm" in event["message"]
        assert "Fix: enable virtualization" in event["message"]
        assert event["source"]["component"] == event["reportingComponent"] == "otel-vmi-hv"
        assert event["reportingInstance"] == "otel-vmi-hv-x1"
        assert series(agent)[("prod", "web")] == "kvm", "the KVM VMI is reported, and gets no Event"
    with running_agent(api, tmp_path, NODE, pods) as agent:  # a restart: the same Event, refreshed
        wait_until(lambda: _results(agent).get("updated") == 1, 10, "the Event found again")
        assert len(_events(api)) == 1 and "created" not in _results(agent)

        def add_kvm(node: dict[str, dict[str, dict[str, str]]]) -> None:
            node["status"]["allocatable"]["devices.kubevirt.io/kvm"] = "1k"

        api.patch("", NODE, add_kvm, kind="Node")  # the reason becomes kvm_not_requested
        wait_until(lambda: len(_events(api)) == 2, 10, "a second Event for the new reason")
        assert sorted("kvm_not_requested" in e["message"] for e in _events(api)) == [False, True]
    assert all(e["involvedObject"]["name"] == "runner" for e in _events(api))


def test_forbidden_events_change_nothing_else(
    api: FakeKubeAPIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pods = tmp_path / "pods"
    emulated_and_accelerated(api, pods)
    Launchers(pods).run_vmi(api.create(make_vmi("ci", "second", NODE)), "qemu", NODE)
    api.forbid("events")
    with caplog.at_level(logging.INFO), running_agent(api, tmp_path, NODE, pods) as agent:
        wait_until(lambda: _results(agent).get("forbidden") == 2, 10, "both Events refused")
        assert agent.http is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.http.port}/readyz", timeout=5) as ready:
            assert ready.status == 200
        assert series(agent) == {
            ("ci", "runner"): "qemu-tcg",
            ("ci", "second"): "qemu-tcg",
            ("prod", "web"): "kvm",
        }
    assert _events(api) == []
    assert len([r for r in caplog.records if "Events cannot be written (403)" in r.getMessage()]) == 1


def test_an_api_server_refusing_writes_for_a_while_gets_the_event_later(
    api: FakeKubeAPIServer, tmp_path: Path
) -> None:
    pods = tmp_path / "pods"
    emulated_and_accelerated(api, pods)
    api.fail_requests(3, 503, verbs=["create"])
    with running_agent(api, tmp_path, NODE, pods) as agent:
        wait_until(lambda: _results(agent).get("created") == 1, 10, "created after the retries")
    assert len(_events(api)) == 1
    assert len([r for r in api.requests if r.verb == "create"]) == 4


def test_an_api_server_that_is_down_gets_the_event_once_it_is_back(
    api: FakeKubeAPIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pods = tmp_path / "pods"
    emulated_and_accelerated(api, pods)
    api.hang_requests(1, verbs=["create"])  # the first write is in flight when the server goes down

    def failed_writes() -> int:
        return len([r for r in caplog.records if "writing an Event failed" in r.getMessage()])

    with (
        caplog.at_level(logging.DEBUG, vmi_events.__name__),
        running_agent(api, tmp_path, NODE, pods) as agent,
    ):
        wait_until(lambda: api.request_count("create") == 1, 10, "the first write sent")
        api.stop()  # cuts the write in flight; later ones meet a closed port
        wait_until(lambda: failed_writes() >= 3, 10, "writes failing while the server is down")
        assert _results(agent) == {} and _events(api) == []
        api.start()  # the same port, the same store
        wait_until(lambda: _results(agent).get("created") == 1, 10, "the Event written once back")
        assert _results(agent) == {"created": 1}
    assert len(_events(api)) == 1
    assert api.request_count("create") == 2, "one write cut, one after the restart: none lost, none doubled"


def test_a_burst_is_rate_limited_and_every_event_accounted_for(
    api: FakeKubeAPIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vmi_events, "EVENTS_PER_SECOND", 100.0)
    monkeypatch.setattr(vmi_events, "EVENTS_BURST", 10)
    monkeypatch.setattr(vmi_events, "QUEUE_SIZE", 200)  # fewer than the VMIs: some are dropped
    pods = tmp_path / "pods"
    launchers = Launchers(pods)
    for index in range(250):
        vmi = make_vmi("ci", f"runner-{index}", NODE)
        launchers.run_vmi(vmi, "qemu", NODE)
        api.create(vmi)
    api.create(make_node(NODE, None))
    api.create(make_kubevirt(True))
    started = time.monotonic()
    with running_agent(api, tmp_path, NODE, pods) as agent:
        wait_until(lambda: sum(_results(agent).values()) == 250, 60, "every Event written or dropped")
        elapsed = time.monotonic() - started
        results = _results(agent)
    created = len(_events(api))
    assert results.get("created") == created and created + results.get("dropped", 0) == 250
    assert created >= 200
    assert elapsed >= (created - 10) / 100.0, "no faster than the bucket allows"
