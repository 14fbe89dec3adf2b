"""Soak: one agent process under VMI churn and injected faults for a given time (not run in CI).

    python -m bench.soak --minutes 20

Churn comes through the fake Kubernetes API server (about 100 running VMIs, replaced continuously;
launchers are libvirt test-driver files, plus a few on a real libvirt daemon). Faults, in turn:
watch streams dropped, the API server stopped for a while, its history compacted (410 Gone), the
real libvirt daemon SIGSTOP'd then resumed, killed then restarted, and the OTLP receiver stopped and
started. Every minute a row: RSS, threads, open fds and scrape latency of the agent.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.agent import NODE, AgentProcess, Node, _poll
from bench.common import ms, table
from tests.fakes.kubevirt_objects import make_vmi
from tests.harness.libvirtd import LibvirtDaemon, kubevirt_launcher
from tests.harness.otlp_receiver import RotelReceiver
from tests.harness.ports import free_ports

RUNNING = 100
REAL_DAEMON_VMIS = 5


def _proc(pid: int) -> tuple[float, int, int]:
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    def __init__(self, root: Path, minutes: float) -> None:
        self.node = Node(root)
        self.deadline = time.monotonic() + minutes * 60
        self.stop = threading.Event()
        self.faults: list[str] = []
        self.churned = 0
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.daemon = LibvirtDaemon.launch()
        for index in range(REAL_DAEMON_VMIS):
            self.daemon.define(f"bench_real-{index}", paused=True)
            kubevirt_launcher(self.node.pods, f"real-pod-{index}", self.daemon)
        self.grpc_port, self.http_port = free_ports(2)
        self.receiver = RotelReceiver(forward=False)
        self.receiver.start(ports=(self.grpc_port, self.http_port))

    def agent_env(self) -> dict[str, str]:
        return {
            "OTEL_METRICS_EXPORTER": "prometheus,otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.grpc_port}",
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
            "OTEL_VMI_HV_LIBVIRT_TIMEOUT": "2s",
        }

    def vmi(self, index: int) -> dict[str, Any]:
        """A churned VMI: no socket (its launcher is 'gone'), only the persistent domain XML.

        With the KubeVirt default URI template this exercises connect failure plus the domain-file
        fallback for every churned VMI; the real-daemon VMIs exercise the socket path.
        """
        name, pod = f"vm-{index}", f"pod-{index}"
        qemu_dir = self.node.pods / pod / "volumes/kubernetes.io~empty-dir/private/libvirt/qemu"
        qemu_dir.mkdir(parents=True, exist_ok=True)
        virt = "qemu" if index % 4 == 0 else "kvm"
        (qemu_dir / f"bench_{name}.xml").write_text(
            f"<domain type='{virt}'><name>bench_{name}</name></domain>"
        )
        return make_vmi("bench", name, NODE, pod_uid=pod, uid=f"uid-{index}")

    def remove(self, index: int) -> None:
        self.node.api.delete("bench", f"vm-{index}")
        shutil.rmtree(self.node.pods / f"pod-{index}")

    def run(self) -> str:
        original_env = self.node.env
        self.node.env = lambda port: {  # type: ignore[method-assign]
            **original_env(port),
            **self.agent_env(),
            "OTEL_VMI_HV_LIBVIRT_URI": "",  # empty means the KubeVirt default: launcher sockets
        }
        for index in range(REAL_DAEMON_VMIS):
            self.node.api.create(make_vmi("bench", f"real-{index}", NODE, pod_uid=f"real-pod-{index}"))
        for index in range(RUNNING):
            self.node.api.create(self.vmi(index))
        agent = AgentProcess(self.node)
        _poll(lambda: agent.get("/readyz")[0] == 200, 60, 0.05)
        threads = [
            threading.Thread(target=self.churn, daemon=True),
            threading.Thread(target=self.scrape, args=(agent,), daemon=True),
            threading.Thread(target=self.inject_faults, daemon=True),
        ]
        for thread in threads:
            thread.start()
        rows = []
        started = time.monotonic()
        while time.monotonic() < self.deadline:
            time.sleep(min(60, max(0, self.deadline - time.monotonic())))
            assert agent.process.poll() is None, "the agent died"
            rss, tasks, fds = _proc(agent.process.pid)
            with self.lock:
                window, self.latencies = self.latencies, []
                faults, churned = len(self.faults), self.churned
            window.sort()
            rows.append(
                [
                    f"{(time.monotonic() - started) / 60:.0f}",
                    f"{rss:.1f}",
                    tasks,
                    fds,
                    ms(statistics.median(window)) if window else "-",
                    ms(window[int(0.99 * (len(window) - 1))]) if window else "-",
                    agent.series(),
                    churned,
                    faults,
                ]
            )
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
        self.stop.set()
        for thread in threads:
            thread.join(30)
        agent.stop()
        self.receiver.stop()
        self.daemon.cleanup()
        self.node.close()
        return (
            "Soak: agent RSS, threads, open fds and /metrics latency per minute\n"
            + table(
                [
                    "minute",
                    "RSS MiB",
                    "threads",
                    "fds",
                    "scrape p50 ms",
                    "scrape p99 ms",
                    "series",
                    "VMIs churned",
                    "faults",
                ],
                rows,
            )
            + "\n\nfaults injected: "
            + ", ".join(f"{k} x{v}" for k, v in _count(self.faults).items())
        )

    def churn(self) -> None:
        oldest, nxt = 0, RUNNING
        while not self.stop.is_set():
            try:
                self.remove(oldest)
                self.node.api.create(self.vmi(nxt))
            except Exception:  # the API server is down during some faults; try again shortly
                time.sleep(0.2)
                continue
            oldest, nxt = oldest + 1, nxt + 1
            with self.lock:
                self.churned += 1
            time.sleep(0.01)  # ~100 transitions per second

    def scrape(self, agent: AgentProcess) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            status, _ = agent.get("/metrics")
            if status == 200:
                with self.lock:
                    self.latencies.append(time.perf_counter() - started)
            time.sleep(1)

    def inject_faults(self) -> None:
        faults = itertools.cycle(
            ["drop_streams", "api_down", "compact", "libvirt_hung", "libvirt_restart", "collector_down"]
        )
        while not self.stop.wait(20):
            fault = next(faults)
            with self.lock:
                self.faults.append(fault)
            if fault == "drop_streams":
                self.node.api.drop_streams()
            elif fault == "api_down":
                self.node.api.stop()
                self.stop.wait(10)
                self.node.api.start()
            elif fault == "compact":
                self.node.api.stop()
                self.stop.wait(2)
                self.node.api.compact()
                self.node.api.start()
            elif fault == "libvirt_hung":
                self.daemon.pause_daemon()
                self.stop.wait(10)
                self.daemon.resume_daemon()
            elif fault == "libvirt_restart":
                self.daemon.kill()
                self.stop.wait(3)
                self.daemon.restart()
            elif fault == "collector_down":
                self.receiver.stop()
                self.stop.wait(15)
                self.receiver = RotelReceiver(forward=False)
                self.receiver.start(ports=(self.grpc_port, self.http_port))


def _count(items: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=20)
    args = parser.parse_args()
    random.seed(1)
    with tempfile.TemporaryDirectory(prefix="otel-vmi-hv-soak-") as root:
        print(Soak(Path(root), args.minutes).run())


if __name__ == "__main__":
    main()
