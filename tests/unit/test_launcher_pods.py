"""What a launcher pod requests, read from the real launcher pod of the fixtures."""

from __future__ import annotations

from typing import Any

from otel_vmi_hv.emulation.launcher_pods import launcher_request_from
from tests.fakes.kubevirt_objects import LAUNCHER_POD_FIXTURE, load_fixture, make_launcher_pod, make_vmi

REAL = load_fixture(LAUNCHER_POD_FIXTURE)  # OpenShift Virtualization 4.11, a KVM launcher


def test_the_real_kvm_launcher_requests_kvm() -> None:
    request = launcher_request_from(REAL, "kvm")
    assert request.requested is True
    assert request.evidence == (
        "launcher pod default/virt-launcher-cat8kv-01-8dzl7 requests devices.kubevirt.io/kvm: 1"
    )


def test_it_requests_no_mshv_and_says_what_it_requests_instead() -> None:
    request = launcher_request_from(REAL, "mshv")
    assert request.requested is False
    assert "requests no devices.kubevirt.io/mshv" in request.evidence
    assert "devices.kubevirt.io/kvm" in request.evidence and "devices.kubevirt.io/tun" in request.evidence


def test_an_emulating_launcher_requests_no_device() -> None:
    pod = make_launcher_pod(make_vmi("ci", "runner", "w1"), "w1", device=None)
    request = launcher_request_from(pod, "kvm")
    assert request.requested is False
    assert request.evidence.startswith("launcher pod ci/virt-launcher-runner-")


def test_a_zero_quantity_is_no_request_and_odd_pods_do_not_raise() -> None:
    pod = make_launcher_pod(make_vmi("ci", "runner", "w1"), "w1", device="kvm")
    for container in pod["spec"]["containers"]:
        for section in ("limits", "requests"):
            if "devices.kubevirt.io/kvm" in container["resources"].get(section, {}):
                container["resources"][section]["devices.kubevirt.io/kvm"] = "0"
    assert launcher_request_from(pod, "kvm").requested is False
    odd_pods: list[dict[str, Any]] = [{}, {"spec": None}, {"spec": {"containers": [None, {"resources": []}]}}]
    for odd in odd_pods:
        assert launcher_request_from(odd, "kvm").requested is False
