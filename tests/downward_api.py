"""A container's environment as the kubelet builds it from a manifest, for tests that run the agent
with the DaemonSet's own variables: downward-API fields resolved, then ``$(VAR)`` references
expanded in order (Kubernetes' dependent environment variables)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DAEMONSET = ROOT / "config" / "kubernetes" / "daemonset.yaml"
_REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")


def expand(value: str, defined: Mapping[str, str]) -> str:
    """``$(VAR)`` becomes VAR's value when VAR was defined earlier; ``$$`` is a literal ``$``; any other
    reference stays as written (what the kubelet does, so an ordering mistake shows in the value)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return defined.get(name, match.group(0))

    return _REFERENCE.sub(replace, value)


def references(value: str) -> list[str]:
    """The variable names ``value`` refers to with ``$(VAR)`` (``$$(VAR)`` is an escape, not one)."""
    return [m.group(1) for m in _REFERENCE.finditer(value) if m.group(0) != "$$"]


def container_environment(container: Mapping[str, Any], fields: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``container`` given the pod's downward-API ``fields`` (by fieldPath)."""
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        source = entry.get("valueFrom")
        if source is not None:
            env[entry["name"]] = fields[source["fieldRef"]["fieldPath"]]
        else:
            env[entry["name"]] = expand(str(entry.get("value", "")), env)
    return env


def daemonset() -> dict[str, Any]:
    (document,) = [d for d in yaml.safe_load_all(DAEMONSET.read_text(encoding="utf-8")) if d]
    assert document["kind"] == "DaemonSet"
    return dict(document)


def agent_container(ds: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    return dict(container)
