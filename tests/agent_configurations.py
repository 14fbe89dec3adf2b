"""The configurations whose imports and memory are measured, as environments for an agent process on
this machine, and what each may import.

- the demo, as ``make run`` starts it: the libvirt source on the test driver's demo node, Prometheus only;
- the DaemonSet's settings, read from ``config/kubernetes/daemonset.yaml`` (OTLP over gRPC), against
  the fake API server, with a pods root that holds no launcher;
- the /proc-only variant, built from ``config/kubernetes-variants/proc-only`` by kustomize: no pods
  root, detection from the host's /proc.

What a configuration *uses* is named by distribution (``kubernetes``, ``libvirt-python``...); what it
may load is those and everything they require, read from the installed packages' metadata, so that a
new version of a dependency pulling in a package of its own does not count as the agent's doing.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.agent_process import AgentProcess, wait_until
from tests.conftest import DEMO_NODE, ROOT
from tests.fakes.kubevirt_objects import NODE
from tests.image.daemonset import DaemonSetContainer
from tests.modules_at_ready import END, LINE
from tests.peers import require

PROJECT = "otel-vmi-hv"  # the agent's own distribution: not a dependency
PROC_ONLY = ROOT / "config" / "kubernetes-variants" / "proc-only"
MODULES_AT_READY = (str(ROOT / "tests" / "modules_at_ready.py"),)
# Imported by a dependency only when it happens to be installed: kubernetes.dynamic tries
# kubernetes_validate, which the development environment has (the manifest tests use it) and the
# image has not.
OPTIONAL_IMPORTS = {"kubernetes": frozenset({"kubernetes-validate"})}


@dataclass(frozen=True)
class Configuration:
    name: str
    env: dict[str, str]
    uses: frozenset[str]  # the distributions this configuration imports itself


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def demo() -> Configuration:
    env = {
        "OTEL_VMI_HV_SOURCE": "libvirt",
        "OTEL_VMI_HV_LIBVIRT_URI": f"test://{DEMO_NODE}",
        "OTEL_METRICS_EXPORTER": "prometheus",  # the Makefile's default for `make run`
    }
    return Configuration("demo (make run)", env, frozenset({"opentelemetry-sdk", "libvirt-python", "h11"}))


def _cluster_env(container: DaemonSetContainer, kubeconfig: Path, otlp_endpoint: str) -> dict[str, str]:
    env = container.environment({"spec.nodeName": NODE})
    env.pop("OTEL_EXPORTER_PROMETHEUS_PORT", None)  # AgentProcess picks a free one
    env.update(KUBECONFIG=str(kubeconfig), OTEL_EXPORTER_OTLP_ENDPOINT=otlp_endpoint)
    if "OTEL_VMI_HV_PROC_ROOT" in env:
        env["OTEL_VMI_HV_PROC_ROOT"] = "/proc"  # the host's /proc, mounted at /host/proc in a pod
    return env


def _otlp_package(env: Mapping[str, str]) -> str:
    protocol = env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    return "opentelemetry-exporter-otlp-proto-" + ("http" if protocol == "http/protobuf" else "grpc")


def daemonset(kubeconfig: Path, pods_root: Path, otlp_endpoint: str, **overrides: str) -> Configuration:
    """The DaemonSet's settings; ``pods_root`` stands for the kubelet's pods directory."""
    env = _cluster_env(DaemonSetContainer.load(), kubeconfig, otlp_endpoint)
    env.update(OTEL_VMI_HV_PODS_ROOT=str(pods_root), **overrides)
    otlp = _otlp_package(env)
    uses = {"opentelemetry-sdk", otlp, "libvirt-python", "kubernetes", "h11"}
    return Configuration(f"DaemonSet settings (OTLP {otlp.rpartition('-')[2]})", env, frozenset(uses))


def proc_only(kubeconfig: Path, otlp_endpoint: str) -> Configuration:
    """The /proc-only variant as kustomize builds it (no pods-root mount: its default path is absent)."""
    (manifest,) = [doc for doc in kustomize(PROC_ONLY) if doc["kind"] == "DaemonSet"]
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _cluster_env(DaemonSetContainer(pod=pod, container=container), kubeconfig, otlp_endpoint)
    assert "OTEL_VMI_HV_PODS_ROOT" not in env and not os.path.exists("/pods"), "the variant mounts no pods"
    uses = {"opentelemetry-sdk", _otlp_package(env), "kubernetes", "h11"}
    return Configuration("proc-only variant", env, frozenset(uses))


def kustomize(directory: Path) -> list[dict[str, Any]]:
    built = subprocess.run(
        [require("kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc is not None]


# ---------------------------------------------------------------------- what a process has loaded


def reporting_agent(configuration: Configuration) -> AgentProcess:
    """The agent with this configuration, to start through tests/modules_at_ready.py (``with``)."""
    return AgentProcess(configuration.env, program=MODULES_AT_READY)


def reported_modules(agent: AgentProcess, timeout: float = 60.0) -> dict[str, str]:
    """Module name → file, as the agent reported them once ready."""

    def report() -> str | None:
        assert agent.process is not None
        output = agent.output()
        if END in output:
            return output
        if agent.process.poll() is not None:
            raise AssertionError(f"agent exited with {agent.process.returncode}:\n{output}")
        return None

    output = wait_until(report, timeout, "the agent's module report")
    assert f"{END} (" not in output, output
    return dict(line.split("\t")[1:3] for line in output.splitlines() if line.startswith(LINE + "\t"))


@cache
def interpreter_modules() -> frozenset[str]:
    """What this Python loads before running anything (site, .pth hooks): not the agent's doing."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys; print('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return frozenset(out.stdout.split())


@cache
def _folder_owners() -> dict[str, str]:
    """Package folder (or top-level module file) → the distribution that installed it: a folder holding
    a module belongs to one distribution, even inside a namespace package like opentelemetry."""
    owners = {}
    for dist in importlib.metadata.distributions():
        name = canonical(dist.metadata["Name"])
        for file in dist.files or ():
            if file.suffix in (".py", ".so"):
                key = file if len(file.parts) == 1 else file.parent
                owners[os.path.normpath(str(dist.locate_file(key)))] = name
    return owners


def distributions(modules: Mapping[str, str]) -> set[str]:
    """The installed distributions the given modules come from (the standard library and the
    project's own modules belong to none), leaving out what the bare interpreter loads."""
    owners = _folder_owners()
    skip = interpreter_modules()
    found = set()
    for name, file in modules.items():
        if file and name not in skip:
            path = os.path.normpath(file)
            found.add(owners.get(path) or owners.get(os.path.dirname(path), ""))
    return found - {PROJECT, ""}


def requirement_closure(names: Iterable[str]) -> set[str]:
    """The distributions and everything they require (extras left out), as installed here."""
    todo = [canonical(name) for name in names]
    for name in list(todo):
        todo.extend(OPTIONAL_IMPORTS.get(name, ()))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional import that is not installed
        for requirement in requires:
            if "extra ==" not in requirement:
                todo.append(canonical(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0]))
    return seen
