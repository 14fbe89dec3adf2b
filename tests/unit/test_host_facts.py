"""Emulation facts on a plain libvirt host: the KVM device probe, re-run when asked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from otel_vmi_hv.emulation.cluster_facts import HostFacts
from otel_vmi_hv.model import VMI, LibvirtTarget
from tests.peers import require

TCG_DOMAIN = VMI("uuid-1", "", "builder", LibvirtTarget("qemu:///system", "builder", "1/uuid-1"))


def test_missing_device_explains_emulation(tmp_path: Path) -> None:
    facts = HostFacts(str(tmp_path / "kvm"))
    reason, evidence = facts.explain(TCG_DOMAIN)
    assert reason == "node_without_kvm"
    assert "missing" in evidence
    assert facts.node_kvm_available() is False


def test_kvm_appearing_is_picked_up_on_refresh(tmp_path: Path) -> None:
    """A device node with /dev/kvm's numbers (10:232) appears where the agent looks."""
    kvm = os.stat(require("kvm")).st_rdev  # a working KVM driver behind those numbers
    require("device-nodes")
    path = tmp_path / "kvm"
    changes: list[int] = []
    facts = HostFacts(str(path), on_change=lambda: changes.append(1))
    assert facts.explain(TCG_DOMAIN)[0] == "node_without_kvm"
    os.mknod(path, 0o600 | stat.S_IFCHR, kvm)
    facts.refresh()
    assert facts.node_kvm_available() is True, facts.explain(TCG_DOMAIN)[1]
    assert facts.explain(TCG_DOMAIN)[0] == "kvm_not_requested"
    assert facts.version == 1 and changes == [1]
    facts.refresh()  # nothing changed: no new version, no notification
    assert facts.version == 1 and changes == [1]


def test_the_libvirt_source_gets_host_facts(tmp_path: Path) -> None:
    from otel_vmi_hv.config import load_settings
    from otel_vmi_hv.emulation.cluster_facts import emulation_facts_for

    settings = load_settings(
        {"OTEL_VMI_HV_SOURCE": "libvirt", "OTEL_VMI_HV_KVM_DEVICE": str(tmp_path / "no-kvm")}
    )
    facts = emulation_facts_for(settings)
    assert isinstance(facts, HostFacts)
    assert facts.explain(TCG_DOMAIN)[0] == "node_without_kvm"
    assert str(tmp_path / "no-kvm") in facts.explain(TCG_DOMAIN)[1]
