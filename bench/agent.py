"""Whole-agent measurements against the fake Kubernetes API server and libvirt test-driver launchers.

Event to visible, libvirt calls per scrape and per VMI lifetime, RSS per 1,000 running VMIs and
after churn, transitions absorbed per second, and start-up to /readyz.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import median, ms, p99, table
from otel_vmi_hv.agent import Agent
from otel_vmi_hv.config import load_settings
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import make_vmi

NODE = "bench-node"
TEMPLATE = "test://{pods_root}/{pod_uid}/node.xml"


class Node:
    """The fake API server plus a pods root where every launcher pod 'runs' its domain."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pods = root / "pods"
        self.pods.mkdir()
        self.api = FakeKubeAPIServer(bookmark_interval=5.0, history_window=200_000)
        self.api.start()
        self.kubeconfig = self.api.write_kubeconfig(root / "kubeconfig")
        self.template = make_vmi("bench", "template", NODE, pod_uid="p")

    def vmi(self, index: int, virt: str = "kvm") -> dict[str, Any]:
        """A Running VMI on this node whose launcher runs a ``virt`` domain."""
        name, pod = f"vm-{index}", f"pod-{index}"
        pod_dir = self.pods / pod
        pod_dir.mkdir(exist_ok=True)
        (pod_dir / "node.xml").write_text(
            f"<node><domain type='{virt}'><name>bench_{name}</name><memory>1024</memory>"
            "<os><type>hvm</type></os></domain></node>"
        )
        vmi = make_vmi("bench", name, NODE, pod_uid=pod, uid=f"uid-{index}")
        return vmi

    def remove(self, index: int) -> None:
        self.api.delete("bench", f"vm-{index}")
        pod_dir = self.pods / f"pod-{index}"
        (pod_dir / "node.xml").unlink()
        pod_dir.rmdir()

    def env(self, port: int) -> dict[str, str]:
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "OTEL_VMI_HV_SOURCE": "kubernetes",
            "OTEL_VMI_HV_NODE_NAME": NODE,
            "OTEL_VMI_HV_PODS_ROOT": str(self.pods),
            "OTEL_VMI_HV_LIBVIRT_URI": TEMPLATE,
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
            "OTEL_VMI_HV_LOG_LEVEL": "warning",
            "HOME": os.environ.get("HOME", "/root"),
            "PATH": os.environ.get("PATH", ""),
        }

    def close(self) -> None:
        self.api.close()


def _poll(check: Callable[[], bool], timeout: float, interval: float = 0.0005) -> float:
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(interval)
    return time.perf_counter()


SCRAPE_POLL = 0.05  # polling a child agent's /metrics: often enough to time it, rarely enough not to load it


def _count_domain_lookups() -> tuple[list[int], Callable[[], None]]:
    """Counts the domain lookups that reach libvirt (each detection makes one), through
    libvirt-python's own class; returns the count and the function that stops counting."""
    import libvirt

    made: list[int] = []
    lookup = libvirt.virConnect.lookupByName

    def counted(conn: Any, name: str) -> Any:
        made.append(1)
        return lookup(conn, name)

    libvirt.virConnect.lookupByName = counted
    return made, lambda: setattr(libvirt.virConnect, "lookupByName", lookup)


def event_to_visible(node: Node, count: int = 300) -> dict[str, Any]:
    settings = load_settings(node.env(0))
    lookups, stop_counting = _count_domain_lookups()
    agent = Agent(settings)
    agent.start()
    assert agent.synced.wait(10)
    assert agent.telemetry is not None
    telemetry = agent.telemetry
    render = lambda: telemetry.scrape().body  # noqa: E731
    latencies = []
    for index in range(count):
        vmi = node.vmi(index)
        needle = f'name="vm-{index}"'.encode()
        started = time.perf_counter()
        node.api.create(vmi)
        latencies.append(_poll(lambda needle=needle: needle in render(), 10) - started)  # type: ignore[misc]
    calls_after_detection = len(lookups)
    for _ in range(1000):
        render()
    calls_per_scrape = (len(lookups) - calls_after_detection) / 1000
    stop_counting()
    result = {
        "median": median(latencies),
        "p99": p99(latencies),
        "calls_per_vmi": calls_after_detection / count,
        "calls_per_scrape": calls_per_scrape,
    }
    agent.stop(budget=2)
    for index in range(count):
        node.remove(index)
    return result


def event_to_visible_real_daemon(node: Node, count: int = 40) -> dict[str, float]:
    """The same measure with each launcher socket leading to a real libvirt daemon and QEMU domain."""
    from tests.harness.libvirtd import LibvirtDaemon, kubevirt_launcher

    daemon = LibvirtDaemon.launch()
    try:
        for index in range(count):
            daemon.define(f"bench_real-{index}", paused=True)
            kubevirt_launcher(node.pods, f"real-pod-{index}", daemon)
        # Empty: the KubeVirt default template, i.e. each launcher's virtqemud socket.
        settings = load_settings({**node.env(0), "OTEL_VMI_HV_LIBVIRT_URI": ""})
        agent = Agent(settings)
        agent.start()
        assert agent.synced.wait(10) and agent.telemetry is not None
        telemetry = agent.telemetry
        render = lambda: telemetry.scrape().body  # noqa: E731
        latencies = []
        for index in range(count):
            vmi = make_vmi("bench", f"real-{index}", NODE, pod_uid=f"real-pod-{index}")
            needle = f'hypervisor_type="qemu-tcg",name="real-{index}"'.encode()
            started = time.perf_counter()
            node.api.create(vmi)
            latencies.append(_poll(lambda needle=needle: needle in render(), 10) - started)  # type: ignore[misc]
        agent.stop(budget=2)
        for index in range(count):
            node.api.delete("bench", f"real-{index}")
    finally:
        daemon.cleanup()
    return {"median": median(latencies), "p99": p99(latencies)}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AgentProcess:
    def __init__(self, node: Node) -> None:
        self.port = _free_port()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "otel_vmi_hv", "run"], env=node.env(self.port), stdout=subprocess.DEVNULL
        )

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read()
        except OSError:
            return 0, b""

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def series(self) -> int:
        return self.get("/metrics")[1].count(b"kubevirt_vmi_hypervisor_info{")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


def _settled_rss(agent: AgentProcess) -> float:
    """RSS after one more scrape and a second of rest: what the agent holds, not what it is doing."""
    agent.get("/metrics")
    time.sleep(1)
    return agent.rss_mib()


def startup_and_memory(node: Node, sizes: tuple[int, ...] = (1, 250, 1_000, 5_000)) -> dict[Any, Any]:
    """A fresh agent per size, whose first list brings every VMI in one document (the watch cache).

    One VMI shows what the first detection costs once (libvirt's test driver, the first collection of
    every instrument); the slope per VMI is read from there on.
    """
    out: dict[Any, Any] = {}
    empty = AgentProcess(node)
    _poll(lambda: empty.get("/readyz")[0] == 200, 30)
    out["rss_idle"] = _settled_rss(empty)
    empty.stop()
    created = 0
    for size in sizes:
        while created < size:
            node.api.create(node.vmi(created))
            created += 1
        agent = AgentProcess(node)

        def is_ready(agent: AgentProcess = agent) -> bool:
            return agent.get("/readyz")[0] == 200

        def all_visible(agent: AgentProcess = agent, size: int = size) -> bool:
            return agent.series() == size

        ready = _poll(is_ready, 60, SCRAPE_POLL) - agent.started
        visible = _poll(all_visible, 120, SCRAPE_POLL) - agent.started
        out[size] = {"ready": ready, "all_visible": visible, "rss": _settled_rss(agent)}
        agent.stop()
    for index in range(created):
        node.remove(index)
    return out


def throughput(node: Node, count: int = 3_000) -> dict[str, float]:
    agent = AgentProcess(node)
    _poll(lambda: agent.get("/readyz")[0] == 200, 30, SCRAPE_POLL)
    vmis = [node.vmi(index) for index in range(count)]
    started = time.perf_counter()
    for vmi in vmis:
        node.api.create(vmi)
    created = time.perf_counter()
    done = _poll(lambda: agent.series() == count, 300, SCRAPE_POLL)
    up = count / (done - started)
    create_rate = count / (created - started)
    started = time.perf_counter()
    for index in range(count):
        node.remove(index)
    done = _poll(lambda: agent.series() == 0, 300, SCRAPE_POLL)
    down = count / (done - started)
    agent.stop()
    return {"create_rate": create_rate, "absorbed_up": up, "absorbed_down": down}


def churn(node: Node, total: int, running: int = 100) -> dict[str, float]:
    agent = AgentProcess(node)
    _poll(lambda: agent.get("/readyz")[0] == 200, 30, SCRAPE_POLL)
    for index in range(running):
        node.api.create(node.vmi(index))
    _poll(lambda: agent.series() == running, 60, SCRAPE_POLL)
    rss_before = agent.rss_mib()
    started = time.perf_counter()
    next_index = running
    while next_index < total:
        node.remove(next_index - running)
        node.api.create(node.vmi(next_index))
        next_index += 1
        if next_index % 5_000 == 0:  # let the agent keep up, as a real node's churn would
            needle = b'name="vm-%d"' % (next_index - 1)
            _poll(lambda needle=needle: needle in agent.get("/metrics")[1], 120, SCRAPE_POLL)  # type: ignore[misc]
    _poll(
        lambda: agent.series() == running and b'name="vm-%d"' % (total - 1) in agent.get("/metrics")[1], 300
    )
    body = agent.get("/metrics")[1]
    elapsed = time.perf_counter() - started
    result = {
        "rss_before": rss_before,
        "rss_after": agent.rss_mib(),
        "seconds": elapsed,
        "overflow": float(b"overflow" in body),
        "series": float(agent.series()),
    }
    agent.stop()
    for index in range(total - running, total):
        node.remove(index)
    return result


def run(churn_total: int = 100_000) -> str:
    with tempfile.TemporaryDirectory(prefix="otel-vmi-hv-bench-") as root:
        node = Node(Path(root))
        try:
            e2v = event_to_visible(node)
            e2v_real = event_to_visible_real_daemon(node)
            memory = startup_and_memory(node)
            rate = throughput(node)
            churned = churn(node, churn_total)
        finally:
            node.close()
    sizes = [k for k in memory if isinstance(k, int)]
    steps = list(itertools.pairwise(sizes))
    listed = [k for k in sizes if k > 1]
    rss = {0: memory["rss_idle"], **{k: memory[k]["rss"] for k in sizes}}
    rows = [
        ["event to visible (watch event → series in /metrics), median", f"{ms(e2v['median'])} ms"],
        ["event to visible, p99", f"{ms(e2v['p99'])} ms"],
        [
            "event to visible with a real libvirt daemon (launcher sockets), median",
            f"{ms(e2v_real['median'])} ms",
        ],
        ["event to visible with a real libvirt daemon, p99", f"{ms(e2v_real['p99'])} ms"],
        ["libvirt calls per scrape (steady state, 1,000 scrapes)", f"{e2v['calls_per_scrape']:.3f}"],
        ["libvirt calls per VMI lifetime", f"{e2v['calls_per_vmi']:.2f}"],
        ["RSS of an idle agent (no VMI)", f"{memory['rss_idle']:.1f} MiB"],
        *[[f"RSS with {k:,} running VMI{'s' * (k > 1)}", f"{memory[k]['rss']:.1f} MiB"] for k in sizes],
        *[
            [f"RSS per 1,000 running VMIs ({a:,} → {b:,})", f"{(rss[b] - rss[a]) / ((b - a) / 1000):.2f} MiB"]
            for a, b in [*steps, (0, sizes[-1])]
        ],
        *[[f"start-up to /readyz with {k:,} VMIs to list", f"{memory[k]['ready']:.2f} s"] for k in listed],
        *[[f"start-up to all {k:,} series visible", f"{memory[k]['all_visible']:.2f} s"] for k in listed],
        ["transitions absorbed per second (3,000 VMIs becoming Running)", f"{rate['absorbed_up']:.0f}/s"],
        ["transitions absorbed per second (3,000 VMIs deleted)", f"{rate['absorbed_down']:.0f}/s"],
        ["  (rate the fake API server produced them)", f"{rate['create_rate']:.0f}/s"],
        [f"churn: {churn_total:,} VMIs created and deleted, 100 running", f"{churned['seconds']:.0f} s"],
        ["  RSS before → after churn", f"{churned['rss_before']:.1f} → {churned['rss_after']:.1f} MiB"],
        ["  RSS growth after churn", f"{churned['rss_after'] - churned['rss_before']:.1f} MiB"],
        [
            "  series at the end / overflow series",
            f"{churned['series']:.0f} / {'yes' if churned['overflow'] else 'none'}",
        ],
    ]
    return "Agent with the Kubernetes source (fake API server, test-driver launchers)\n" + table(
        ["measure", "value"], rows
    )


if __name__ == "__main__":
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(run(total))
