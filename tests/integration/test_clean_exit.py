"""The agent lets go of libvirt before the process ends: `detect` run again and again never aborts.

`detect` used to end with a live libvirt connection (a connection with domain event callbacks stays
open whatever close() says) and libvirt's event-loop thread still serving it, and so still able to
call into Python, while the interpreter shut down: now and then the process died of SIGABRT after
its last log line. Stopping an agent now deregisters its callbacks, closes its connections, waits
for both, and ends the event loop.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from otel_vmi_hv.agent import Agent
from otel_vmi_hv.config import load_settings
from tests.agent_process import wait_until
from tests.conftest import ROOT
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import NODE, make_kubevirt, make_node, make_vmi
from tests.harness.libvirtd import LibvirtDaemon, kubevirt_launcher

pytestmark = [pytest.mark.libvirtd]

DOMAINS = ("exit_web", "exit_db", "exit_cache")
STANDALONE_RUNS = 40  # the path with a kept connection, lifecycle events and keepalive
KUBEVIRT_RUNS = 10  # one connection per launcher socket, closed after each call; API watches
PARALLEL = 4  # runs at a time, so 50 runs take about 15 s on two cores (one takes 0.5 s, or 1.3 s)


@pytest.fixture
def domains(libvirtd: LibvirtDaemon) -> Iterator[LibvirtDaemon]:
    """Paused domains on the shared daemon (no CPU spent), undefined afterwards."""
    for name in DOMAINS:
        libvirtd.define(name, paused=True)
    try:
        yield libvirtd
    finally:
        for name in DOMAINS:
            libvirtd.undefine(name)


def test_stopping_the_agent_leaves_no_libvirt_connection_or_event_thread(domains: LibvirtDaemon) -> None:
    here = os.getpid()
    baseline = domains.client_connections(here)  # this process's: the harness's own, if open
    settings = load_settings(
        {
            "OTEL_VMI_HV_SOURCE": "libvirt",
            "OTEL_VMI_HV_LIBVIRT_URI": domains.ro_uri,
            "OTEL_VMI_HV_NODE_NAME": NODE,
            "HOME": os.environ.get("HOME", "/root"),
        }
    )
    agent = Agent(settings, with_telemetry=False)
    agent.start()
    try:
        assert agent.synced.wait(10), agent.source.last_error
        assert agent.tracker.wait_idle(10)
        # Lifecycle events registered, keepalive on: the connection libvirt used to keep open.
        assert domains.client_connections(here) == baseline + 1
    finally:
        agent.stop(budget=2.0)
    assert domains.client_connections(here) == baseline, "the agent's connection is closed"
    assert "libvirt-events" not in {t.name for t in threading.enumerate()}
    assert "libvirt-close" not in {t.name for t in threading.enumerate()}, "closes were waited for"


def _detect(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otel_vmi_hv", "detect"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_detect_against_real_daemons_never_aborts(domains: LibvirtDaemon, tmp_path: Path) -> None:
    """Most runs read the daemon directly (standalone: lifecycle events, a kept connection), the
    others through KubeVirt launcher sockets (the fake API server, one connection per launcher)."""
    baseline = domains.client_connections()
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    standalone = {**base, "OTEL_VMI_HV_SOURCE": "libvirt", "OTEL_VMI_HV_LIBVIRT_URI": domains.ro_uri}
    with FakeKubeAPIServer() as api:
        pods = tmp_path / "pods"
        for index, domain in enumerate(DOMAINS):
            namespace, name = domain.split("_")
            kubevirt_launcher(pods, f"pod-{index}", domains)
            api.create(make_vmi(namespace, name, NODE, pod_uid=f"pod-{index}", runtime_user=107))
        api.create(make_node(NODE, "1k"))
        api.create(make_kubevirt(True))
        kubevirt = {
            **base,
            "KUBECONFIG": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
            "OTEL_VMI_HV_SOURCE": "kubernetes",
            "OTEL_VMI_HV_NODE_NAME": NODE,
            "OTEL_VMI_HV_PODS_ROOT": str(pods),
        }
        with ThreadPoolExecutor(PARALLEL) as pool:
            runs = [standalone] * STANDALONE_RUNS + [kubevirt] * KUBEVIRT_RUNS
            results = list(pool.map(_detect, runs))
    failed = [r for r in results if r.returncode != 0]
    assert not failed, f"{len(failed)} of {len(runs)} runs failed; the first:\n{failed[0].stderr[-3000:]}"
    for result in results:
        assert "Fatal Python error" not in result.stderr
        lines = {tuple(line.split()[:4]) for line in result.stdout.splitlines()}
        assert {("exit", name) for name in ("web", "db", "cache")} <= {line[:2] for line in lines}
        assert all(line[3] == "qemu-tcg" for line in lines if line[:1] == ("exit",)), result.stdout
    wait_until(lambda: domains.client_connections() <= baseline, 10, "every run's connections gone")
