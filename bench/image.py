"""The agent image: its size above the base and where the bytes go, and its idle memory with the
DaemonSet's settings against the manifest's request and limit.

    python -m bench.image [IMAGE [BASE_IMAGE]]

Needs root, podman and the built image (`make image-test` builds it and runs this at its end).
Memory is compared with the same agent run outside a container, from this checkout's environment, on
the same node and settings, in the same run: the ratio tells what the image and the container add.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.common import table
from tests.agent_process import AgentProcess, free_port, http_get, wait_until
from tests.exposition import info_series
from tests.image.daemonset import DaemonSetContainer
from tests.image.kubevirt_node import NODE, Node, daemonset_run_args, kubevirt_node
from tests.image.podman import Container, image_size, podman, process_status
from tests.peers import BASE_IMAGE_ENV, IMAGE_ENV

MB = 1000 * 1000  # podman reports sizes in decimal megabytes
MIB = 1024 * 1024
SIZE_BUDGET = 220 * MB
IDLE_TARGET_MIB = 80.0  # the image with the DaemonSet's settings, idle
IDLE_SECONDS = 5.0  # after both VMIs are detected
TOP = 6

_SITE_SIZES = """
import json, os, site
root = site.getsitepackages()[0]
sizes, pyc = {}, 0
for entry in os.scandir(root):
    total = 0
    for folder, _dirs, files in os.walk(entry.path) if entry.is_dir() else [(root, [], [entry.name])]:
        for name in files:
            size = os.lstat(os.path.join(folder, name)).st_size
            total += size
            pyc += size if name.endswith(".pyc") else 0
    key = entry.name.split("-")[0] if entry.name.endswith(".dist-info") else entry.name
    sizes[key] = sizes.get(key, 0) + total
print(json.dumps({"root": root, "sizes": sizes, "pyc": pyc}))
"""
_DPKG = "dpkg-query -W -f='${Package}\\t${Installed-Size}\\n'"


def _in_image(image: str, *command: str) -> str:
    return podman("run", "--rm", "--network=none", "--entrypoint", command[0], image, *command[1:]).stdout


def _packages(image: str) -> dict[str, int]:
    """Installed Debian packages and their sizes in bytes (dpkg's Installed-Size is KiB)."""
    out = _in_image(image, "sh", "-c", _DPKG)
    return {name: int(kib) * 1024 for name, kib in (line.split("\t") for line in out.splitlines() if line)}


def _top(sizes: dict[str, int], count: int) -> list[tuple[str, int]]:
    ordered = sorted(sizes.items(), key=lambda item: -item[1])
    head, rest = ordered[:count], ordered[count:]
    return [*head, (f"{len(rest)} others", sum(size for _, size in rest))] if rest else head


def size_report(image: str, base: str) -> str:
    own = image_size(image) - image_size(base)
    budget = f"{own / SIZE_BUDGET:.2f} of the {SIZE_BUDGET / MB:.0f} MB budget"
    rows: list[Sequence[object]] = [
        ["base (PYTHON_IMAGE)", f"{image_size(base) / MB:.1f}", ""],
        ["image", f"{image_size(image) / MB:.1f}", ""],
        ["above the base", f"{own / MB:.1f}", budget],
    ]
    history: list[dict[str, Any]] = json.loads(podman("history", "--format", "json", image).stdout)
    # History runs newest first and ends with the base's own entries.
    base_entries = len(json.loads(podman("history", "--format", "json", base).stdout))
    layers = [(e["size"], e["CreatedBy"]) for e in history[:-base_entries] if e["size"] > 0]
    layer_rows = [[f"{size / MB:.1f}", _instruction(created)] for size, created in layers]

    base_packages = _packages(base)
    added = {name: size for name, size in _packages(image).items() if name not in base_packages}
    site = json.loads(_in_image(image, "python3", "-c", _SITE_SIZES))
    python_total = sum(site["sizes"].values())
    where = [[f"Debian: {name}", f"{size / MB:.1f}", f"{size / own:.0%}"] for name, size in _top(added, TOP)]
    where += [
        [f"Python: {name}", f"{size / MB:.1f}", f"{size / own:.0%}"]
        for name, size in _top(site["sizes"], TOP + 2)
    ]
    where.append(
        ["Python: of all that, compiled .pyc", f"{site['pyc'] / MB:.1f}", f"{site['pyc'] / own:.0%}"]
    )
    return "\n\n".join(
        [
            f"Image size ({image} on {base}; MB = 10^6 bytes, as podman counts)\n"
            + table(["what", "MB", "ratio"], rows),
            "Layers above the base\n" + table(["MB", "instruction"], layer_rows),
            f"Where the bytes above the base go ({len(added)} Debian packages added, "
            f"{python_total / MB:.1f} MB of Python packages in {site['root']})\n"
            + table(["what", "MB", "share"], where),
        ]
    )


def _instruction(created_by: str) -> str:
    text = " ".join(created_by.replace("/bin/sh -c ", "").split())
    return text[:70] + ("…" if len(text) > 70 else "")


def _wait_detected(base_url: str, node: Node) -> None:
    def detected() -> bool:
        try:
            status, body = http_get(base_url + "/metrics", timeout=2)
        except OSError:
            return False
        series = {key: labels["hypervisor_type"] for key, labels in info_series(body).items()}
        return status == 200 and series == node.expected

    wait_until(detected, 60, "both VMIs detected", interval=0.2)
    time.sleep(IDLE_SECONDS)  # the measurement is of the idle agent, some seconds after its work


def _outside_rss(env: dict[str, str], node: Node) -> float:
    with AgentProcess(env) as outside:
        _wait_detected(outside.base_url, node)
        rss = outside.rss_mib()
        outside.terminate()
    return rss


def memory_report(image: str) -> str:
    daemonset = DaemonSetContainer.load()
    with kubevirt_node() as node:
        port = free_port()
        with Container(image, daemonset_run_args(daemonset, node, port), daemonset.command()) as container:
            _wait_detected(f"http://127.0.0.1:{port}", node)
            in_container = process_status(container.pid).rss_bytes / MIB
        env = daemonset.environment({"spec.nodeName": NODE})
        env.update(
            OTEL_VMI_HV_PODS_ROOT=str(node.pods_dir),
            KUBECONFIG=str(node.kubeconfig),
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        )
        env.pop("OTEL_EXPORTER_PROMETHEUS_PORT")  # AgentProcess picks a free one
        baseline = _outside_rss(env, node)
        prometheus_only = _outside_rss({**env, "OTEL_METRICS_EXPORTER": "prometheus"}, node)
    request, limit = daemonset.memory_request / MIB, daemonset.memory_limit / MIB
    target = IDLE_TARGET_MIB
    rows = [
        ["agent outside a container (this checkout's venv), same settings", f"{baseline:.1f}", "1.00"],
        [
            "the same, Prometheus exporter only (no OTLP/gRPC)",
            f"{prometheus_only:.1f}",
            f"{prometheus_only / baseline:.2f}",
        ],
        ["the image, DaemonSet settings", f"{in_container:.1f}", f"{in_container / baseline:.2f}"],
        ["target for the image, DaemonSet settings", f"{target:.0f}", f"{target / baseline:.2f}"],
        ["DaemonSet memory request", f"{request:.0f}", f"{request / baseline:.2f}"],
        ["DaemonSet memory limit", f"{limit:.0f}", f"{limit / baseline:.2f}"],
    ]
    return (
        f"Idle RSS, 2 running VMIs (one over a launcher socket, one from its domain file), "
        f"{IDLE_SECONDS:.0f} s after both were detected\n" + table(["what", "MiB", "÷ outside"], rows)
    )


def main(argv: Sequence[str]) -> None:
    image = argv[0] if argv else os.environ.get(IMAGE_ENV, "localhost/otel-vmi-hv:ci")
    base = argv[1] if len(argv) > 1 else os.environ.get(BASE_IMAGE_ENV, "")
    if base:
        print(size_report(image, base), end="\n\n", flush=True)
    print(memory_report(image))


if __name__ == "__main__":
    main(sys.argv[1:])
