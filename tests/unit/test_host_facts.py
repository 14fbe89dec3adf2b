"""Emulation facts on a plain libvirt host: the KVM device probe, re-run when asked."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from otel_vmi_hv.emulation.host_facts import HostFacts
from otel_vmi_hv.emulation.kvm_device import KvmState
from otel_vmi_hv.interfaces import Recorder, Snapshot
from otel_vmi_hv.model import VMI, LibvirtTarget, Series
from tests.agent_process import wait_until
from tests.peers import require

TCG_DOMAIN = VMI("uuid-1", "", "builder", LibvirtTarget("qemu:///system", "builder", "1/uuid-1"))
EMULATED = Snapshot(1, (), 0, 0, ((Series("qemu-tcg", "builder", "", "host"), TCG_DOMAIN),))


def following(facts: HostFacts) -> HostFacts:
    """The facts explaining a snapshot with the TCG domain, published without their worker."""
    facts.follow(lambda: EMULATED)
    facts.publish()
    return facts


def test_missing_device_explains_emulation(tmp_path: Path) -> None:
    facts = following(HostFacts(str(tmp_path / "kvm"), interval=3600))
    reason, evidence = facts.explanations()["uuid-1"]
    assert reason == "node_without_kvm"
    assert "missing" in evidence
    assert facts.node_kvm_available() is False


def test_explanations_are_published_before_any_read(tmp_path: Path) -> None:
    facts = HostFacts(str(tmp_path / "kvm"), interval=3600)
    assert facts.explanations() == {}, "nothing followed yet"
    facts.follow(lambda: EMULATED)
    facts.start()
    try:
        wait_until(lambda: "uuid-1" in facts.explanations(), 5, "the worker explains the followed snapshot")
    finally:
        facts.stop()


def test_kvm_appearing_is_picked_up_on_refresh(tmp_path: Path) -> None:
    """A device node with /dev/kvm's numbers (10:232) appears where the agent looks."""
    kvm = os.stat(require("kvm")).st_rdev  # a working KVM driver behind those numbers
    require("device-nodes")
    path = tmp_path / "kvm"
    facts = following(HostFacts(str(path), interval=3600))
    assert facts.explanations()["uuid-1"][0] == "node_without_kvm"
    version = facts.version
    os.mknod(path, 0o600 | stat.S_IFCHR, kvm)
    facts.refresh()
    assert facts.node_kvm_available() is True, facts.explanations()["uuid-1"][1]
    assert facts.explanations()["uuid-1"][0] == "kvm_not_requested"
    assert facts.version > version
    version = facts.version
    facts.refresh()  # nothing changed: no new version
    assert facts.version == version


def test_the_libvirt_source_gets_host_facts(tmp_path: Path) -> None:
    from otel_vmi_hv.config import load_settings
    from otel_vmi_hv.emulation.cluster_facts import emulation_facts_for

    settings = load_settings(
        {"OTEL_VMI_HV_SOURCE": "libvirt", "OTEL_VMI_HV_KVM_DEVICE": str(tmp_path / "no-kvm")}
    )
    facts = emulation_facts_for(settings, Recorder())
    assert isinstance(facts, HostFacts)
    reason, evidence = following(facts).explanations()["uuid-1"]
    assert reason == "node_without_kvm"
    assert str(tmp_path / "no-kvm") in evidence


def test_a_failing_pass_is_logged_and_the_worker_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def probe(_device: str) -> KvmState:
        calls.append(1)
        if len(calls) == 2:  # the first probe again, after the one at construction
            raise OSError("a probe no one foresaw")
        return KvmState(len(calls) > 2, "readable" if len(calls) > 2 else "missing")

    facts = HostFacts(str(tmp_path / "kvm"), interval=0.05, probe=probe)
    facts.follow(lambda: EMULATED)
    with caplog.at_level(logging.ERROR, logger="otel_vmi_hv"):
        facts.start()
        try:
            wait_until(lambda: facts.node_kvm_available() is True, 10, "a later pass after the failing one")
        finally:
            facts.stop()
    assert any("a probe no one foresaw" in (r.exc_text or "") for r in caplog.records), "the bug is logged"


def test_wakes_do_not_postpone_the_probe(tmp_path: Path) -> None:
    """On a host with churn the tracker wakes the facts more often than the probe is due."""
    probes: list[int] = []

    def probe(_device: str) -> KvmState:
        probes.append(1)
        return KvmState(False, "missing")

    facts = HostFacts(str(tmp_path / "kvm"), interval=0.2, probe=probe)
    facts.start()
    try:

        def woken_until_probed() -> bool:
            facts.wake()  # every poll of this wait: far more often than every 0.2 s
            return len(probes) >= 3

        wait_until(woken_until_probed, 10, "the probe run again despite the wakes", interval=0.01)
    finally:
        facts.stop()
