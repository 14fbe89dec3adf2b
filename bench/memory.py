"""The agent's resident memory against the floor its libraries set, per configuration; and the image.

    python -m bench.memory

For each configuration (the demo as ``make run`` starts it, the DaemonSet's settings with OTLP over
gRPC, the /proc-only variant; tests/agent_configurations.py) the agent runs as a real process against
the fake API server, and two figures are taken in the same run:
- the **import floor**: a fresh Python that imports exactly the modules that configuration's agent had
  loaded once ready (reported by tests/modules_at_ready.py), the agent's own modules left out, and
  nothing else: what its libraries cost resident;
- the agent's **idle RSS**: ``python -m otel_vmi_hv run`` with that configuration, ready, scraped, left
  alone for a few seconds.
Each is the median of three processes. The difference is what the agent itself holds: its code, its
threads, its state. The image's size above its base is read from podman when ``make image-test`` built
it on this machine.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from bench.common import table
from tests.agent_configurations import (
    Configuration,
    daemonset,
    demo,
    distributions,
    proc_only,
    reported_modules,
    reporting_agent,
)
from tests.agent_process import AgentProcess, free_port, http_get
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import make_vmi
from tests.peers import BASE_IMAGE_ENV, IMAGE_ENV

MIB = 1024 * 1024
MB = 1000 * 1000
RUNS = 3
SETTLE_SECONDS = 3.0  # after readiness and a few scrapes: the idle agent, not the starting one
OWN_TARGET_MIB = 12.0  # the agent's idle RSS may exceed its configuration's import floor by this much
IMAGE_BUDGET_MB = 220.0
DEFAULT_IMAGE = "localhost/otel-vmi-hv:ci"
DEFAULT_BASE = "localhost/otel-vmi-hv-python-base:3.11-bookworm"

# Imports the modules named on stdin, one a line, in that order (a module that cannot be imported on
# its own, such as the runtime module a Cython extension creates, is counted and skipped), then
# prints how many were imported, how many skipped, and VmRSS in KiB.
_FLOOR = """
import importlib, sys
imported = skipped = 0
for name in sys.stdin.read().split():
    try:
        importlib.import_module(name)
        imported += 1
    except Exception:
        skipped += 1
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
print(imported, skipped, rss)
"""


def floor_rss(modules: Iterable[str]) -> tuple[float, int, int]:
    """(VmRSS in MiB, modules imported, modules skipped) of a Python importing exactly ``modules``."""
    names = "\n".join(modules)
    out = subprocess.run(
        [sys.executable, "-c", _FLOOR], input=names, capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    return int(out[2]) / 1024, int(out[0]), int(out[1])


def agent_modules(configuration: Configuration) -> dict[str, str]:
    with reporting_agent(configuration) as agent:
        return reported_modules(agent)


def idle_rss(configuration: Configuration) -> float:
    with AgentProcess(configuration.env) as agent:
        agent.wait_ready(60)
        for _ in range(3):
            http_get(agent.base_url + "/metrics")
        time.sleep(SETTLE_SECONDS)
        return agent.rss_mib()


def _floor_modules(modules: dict[str, str]) -> list[str]:
    """Every module the agent had loaded, in an order that imports packages before their modules,
    except the agent's own and the script that started it."""
    return sorted(name for name in modules if not name.startswith(("otel_vmi_hv", "__main__", "__mp_main__")))


def measure(configuration: Configuration) -> dict[str, float]:
    modules = agent_modules(configuration)
    names = _floor_modules(modules)
    floors = [floor_rss(names) for _ in range(RUNS)]
    idles = [idle_rss(configuration) for _ in range(RUNS)]
    return {
        "packages": float(len(distributions(modules))),
        "modules": float(len(names)),
        "skipped": float(floors[0][2]),
        "floor": statistics.median(floor for floor, _, _ in floors),
        "idle": statistics.median(idles),
    }


def bare_interpreter_rss() -> float:
    return statistics.median(floor_rss([])[0] for _ in range(RUNS))


def configurations(root: Path, api: FakeKubeAPIServer) -> list[tuple[str, Callable[[], Configuration]]]:
    kubeconfig = api.write_kubeconfig(root / "kubeconfig")
    pods = root / "pods"
    pods.mkdir()
    otlp = f"http://127.0.0.1:{free_port()}"  # nothing listens: the exporter is loaded and idle
    return [
        ("demo (`make run`: libvirt source, test driver)", demo),
        ("DaemonSet settings (OTLP gRPC), 2 VMIs", lambda: daemonset(kubeconfig, pods, otlp)),
        ("proc-only variant (OTLP gRPC), 2 VMIs", lambda: proc_only(kubeconfig, otlp)),
    ]


def floor_report() -> str:
    with tempfile.TemporaryDirectory(prefix="otel-vmi-hv-memory-") as root, FakeKubeAPIServer() as api:
        for index in range(2):
            api.create(make_vmi("bench", f"vm-{index}", "worker-1"))
        bare = bare_interpreter_rss()
        rows = []
        for label, build in configurations(Path(root), api):
            result = measure(build())
            own = result["idle"] - result["floor"]
            rows.append(
                [
                    label,
                    f"{result['packages']:.0f}",
                    f"{result['modules']:.0f}",
                    f"{result['floor']:.1f}",
                    f"{result['idle']:.1f}",
                    f"{own:.1f}",
                    "yes" if own <= OWN_TARGET_MIB else "**no**",
                ]
            )
    return (
        f"Idle RSS against the import floor (MiB; median of {RUNS} processes each; a bare interpreter: "
        f"{bare:.1f} MiB)\n"
        + table(
            [
                "configuration",
                "packages",
                "modules",
                "import floor",
                "agent idle",
                "agent - floor",
                f"≤ {OWN_TARGET_MIB:.0f}",
            ],
            rows,
        )
    )


def image_report(image: str, base: str) -> str:
    """The image's size above its base, when both exist in this machine's podman storage."""
    from tests.image.podman import image_size, podman

    if shutil.which("podman") is None:
        return "Image: not measured (no podman here; `make image-test` installs it and builds the image)"
    present = all(podman("image", "exists", name, check=False).returncode == 0 for name in (image, base))
    if not present:
        return f"Image: not measured ({image} or {base} is not built here: `make image-test` builds both)"
    above = (image_size(image) - image_size(base)) / MB
    rows = [
        [f"{image} above {base}", f"{above:.1f}", f"{IMAGE_BUDGET_MB:.0f}", f"{above / IMAGE_BUDGET_MB:.2f}"]
    ]
    return "Image size (MB = 10^6 bytes, as podman counts)\n" + table(["what", "MB", "budget", "ratio"], rows)


def run() -> str:
    image = os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
    base = os.environ.get(BASE_IMAGE_ENV) or DEFAULT_BASE
    return floor_report() + "\n\n" + image_report(image, base)


if __name__ == "__main__":
    print(run())
