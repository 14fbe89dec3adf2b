"""Faults injected for real into a real libvirt daemon: SIGSTOP (hung), SIGKILL and restart, and
SIGTERM to the agent while a libvirt call hangs. The agent keeps serving, reports unknown where it
must, and recovers by itself."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.agent_process import AgentProcess, wait_until
from tests.exposition import info_series, parse_samples
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import make_vmi
from tests.harness.libvirtd import LibvirtDaemon, kubevirt_launcher

pytestmark = [pytest.mark.e2e, pytest.mark.libvirtd]
NODE = "fault-node"


def _types(agent: AgentProcess) -> dict[tuple[str, str], str]:
    return {key: labels["hypervisor_type"] for key, labels in info_series(agent.metrics()).items()}


def _threads(agent: AgentProcess) -> int:
    """The agent's thread count once steady: the thread that served a scrape ends just after it."""
    assert agent.process is not None
    task_dir = f"/proc/{agent.process.pid}/task"
    seen = [len(os.listdir(task_dir))]
    deadline = time.monotonic() + 2
    while (len(seen) < 3 or len(set(seen[-3:])) > 1) and time.monotonic() < deadline:
        time.sleep(0.02)
        seen.append(len(os.listdir(task_dir)))
    return seen[-1]


def _detection_errors(agent: AgentProcess) -> float:
    """Detections that ended unknown so far, whatever the reason (retries count again)."""
    return sum(value for _, value in parse_samples(agent.metrics(), "otel_vmi_hv_detection_errors_total"))


def _connections(agent: AgentProcess) -> dict[str, float]:
    samples = parse_samples(agent.metrics(), "otel_vmi_hv_libvirt_connections")
    return {labels["state"]: value for labels, value in samples}


def _scrape_seconds(agent: AgentProcess) -> float:
    started = time.monotonic()
    agent.metrics()
    return time.monotonic() - started


def test_hung_daemon_never_blocks_scrapes_and_recovers(
    libvirtd_factory: Callable[[], LibvirtDaemon], api: FakeKubeAPIServer, tmp_path: Path
) -> None:
    """KubeVirt layout: each VMI's launcher socket under a pods root far longer than sun_path."""
    daemon = libvirtd_factory()
    pods = tmp_path / ("pods-" + "x" * 60)
    names = ["before-1", "before-2", "during", *[f"burst-{i}" for i in range(8)]]
    for name in names:
        daemon.define(f"ops_{name}", paused=True)
        launcher = kubevirt_launcher(pods, f"pod-{name}", daemon)
        if name.startswith("burst"):  # no persistent domain XML to fall back on
            (launcher.empty_dir / "private" / "libvirt" / "qemu").unlink()
    env = {
        "KUBECONFIG": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
        "OTEL_VMI_HV_SOURCE": "kubernetes",
        "OTEL_VMI_HV_NODE_NAME": NODE,
        "OTEL_VMI_HV_PODS_ROOT": str(pods),
        "OTEL_VMI_HV_LIBVIRT_TIMEOUT": "1s",
    }
    for name in names[:2]:
        api.create(make_vmi("ops", name, NODE, pod_uid=f"pod-{name}", runtime_user=107))
    with AgentProcess(env) as agent:
        agent.wait_ready()
        wait_until(
            lambda: _types(agent) == {("ops", "before-1"): "qemu-tcg", ("ops", "before-2"): "qemu-tcg"},
            15,
            "the first two VMIs detected over their launcher sockets",
        )
        threads_before = _threads(agent)

        daemon.pause_daemon()
        # The launcher's socket hangs, but its persistent domain XML is readable: detected from it.
        api.create(make_vmi("ops", "during", NODE, pod_uid="pod-during"))
        wait_until(lambda: _types(agent).get(("ops", "during")) == "qemu-tcg", 15, "the domain-file fallback")
        counts = parse_samples(agent.metrics(), "otel_vmi_hv_detection_duration_seconds_count")
        assert "domain_file" in {labels["method"] for labels, _ in counts}
        # Without that file there is nothing to go on: unknown after the timeout.
        for name in names[3:]:
            api.create(make_vmi("ops", name, NODE, pod_uid=f"pod-{name}"))
        wait_until(
            lambda: sum(1 for v in _types(agent).values() if v == "unknown") == 8, 30, "the new ones unknown"
        )
        assert _types(agent)[("ops", "before-1")] == "qemu-tcg", "detected VMIs keep their type"
        assert max(_scrape_seconds(agent) for _ in range(20)) < 0.5
        # Every launcher socket leads to the same hung daemon: one stuck call per socket at most,
        # and retries (1 s backoff, doubling) must not add threads. Wait until each of the eight
        # unknown VMIs has failed once more (a retry ran) rather than for a while.
        hung_sockets = len(names) - 2  # "during" and the eight bursts; the first two were done
        settled = _threads(agent)
        failed = _detection_errors(agent)
        wait_until(lambda: _detection_errors(agent) >= failed + 8, 20, "a retry of every unknown VMI")
        assert _threads(agent) <= settled, "retries must reuse the stuck calls' accounting, not add threads"
        assert settled - threads_before <= hung_sockets, (threads_before, settled)
        body = agent.metrics()
        hung = {labels["state"]: v for labels, v in parse_samples(body, "otel_vmi_hv_libvirt_connections")}
        assert hung["hung"] >= 1

        daemon.resume_daemon()
        wait_until(lambda: set(_types(agent).values()) == {"qemu-tcg"}, 30, "re-detection without a restart")
        assert len(_types(agent)) == len(names)


def test_killed_and_restarted_daemon_is_reconnected(libvirtd_factory: Callable[[], LibvirtDaemon]) -> None:
    daemon = libvirtd_factory()
    daemon.define("prod_a", paused=True)
    daemon.define("prod_b", paused=True)
    env = {
        "OTEL_VMI_HV_SOURCE": "libvirt",
        "OTEL_VMI_HV_LIBVIRT_URI": daemon.uri,
        "OTEL_VMI_HV_RESYNC_INTERVAL": "1h",  # recovery must not wait for a periodic re-listing
    }
    with AgentProcess(env) as agent:
        agent.wait_ready()
        wait_until(
            lambda: _types(agent) == {("prod", "a"): "qemu-tcg", ("prod", "b"): "qemu-tcg"}, 15, "a and b"
        )
        assert _connections(agent).get("connected") == 1
        daemon.kill()
        wait_until(lambda: _connections(agent).get("disconnected") == 1, 10, "the agent to notice the kill")
        # QEMU outlives its daemon: the domains are still running and still reported.
        assert _types(agent) == {("prod", "a"): "qemu-tcg", ("prod", "b"): "qemu-tcg"}
        daemon.restart()
        daemon.define("prod_c", paused=True)
        daemon.destroy("prod_a")
        wait_until(
            lambda: _types(agent) == {("prod", "b"): "qemu-tcg", ("prod", "c"): "qemu-tcg"},
            20,
            "the restarted daemon's changes, seen through a new connection",
        )
        assert "connection to libvirt" in agent.output() and "closed" in agent.output()


def test_sigterm_during_a_hung_libvirt_call_exits_within_5s(
    libvirtd_factory: Callable[[], LibvirtDaemon],
) -> None:
    daemon = libvirtd_factory()
    daemon.define("prod_a", paused=True)
    env = {
        "OTEL_VMI_HV_SOURCE": "libvirt",
        "OTEL_VMI_HV_LIBVIRT_URI": daemon.uri,
        "OTEL_VMI_HV_LIBVIRT_TIMEOUT": "30s",
        "OTEL_VMI_HV_RESYNC_INTERVAL": "1s",
    }
    with AgentProcess(env) as agent:
        agent.wait_ready()
        wait_until(lambda: ("prod", "a") in _types(agent), 15, "a")
        daemon.pause_daemon()
        # The next re-listing (every second) sends its request and waits for the stopped daemon.
        wait_until(lambda: daemon.unread_request_bytes() > 0, 10, "a libvirt call stuck in the daemon")
        took = agent.terminate()
        assert agent.process is not None and agent.process.returncode == 0, agent.output()
        assert took < 5.0
        daemon.resume_daemon()
