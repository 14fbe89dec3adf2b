"""The DaemonSet's container settings, read from config/kubernetes/daemonset.yaml and turned into podman
arguments, so the image is run as the cluster would run it and a change to the manifest is tested as is.

Only what a pod on a node would get from the manifest is translated: user and group, capabilities,
privilege escalation, read-only root, the memory limit, the memory-backed /tmp, the pods-root
hostPath mount (read-only, HostToContainer propagation), the environment and the arguments. What a
cluster supplies (the node name from the downward API) and what cannot be the same on a test machine
is passed in by the caller as explicit overrides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from tests.conftest import ROOT
from tests.downward_api import container_environment

DAEMONSET: Final = ROOT / "config" / "kubernetes" / "daemonset.yaml"
PODS_VOLUME: Final = "kubelet-pods"
# The pod's identity from the downward API, as one pod of the DaemonSet would have it.
POD_FIELDS: Final = {
    "metadata.name": "otel-vmi-hv-x7k2p",
    "metadata.namespace": "otel-vmi-hv",
    "metadata.uid": "2f6c9a0e-51d4-4c1b-9f57-0c8b3d1e6a42",
}
_QUANTITY: Final = re.compile(r"^(\d+)(Ki|Mi|Gi)?$")
_UNIT_BYTES: Final = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in bytes (only the binary suffixes the manifest uses)."""
    match = _QUANTITY.match(str(quantity))
    if match is None:
        raise ValueError(f"unsupported memory quantity {quantity!r}")
    return int(match.group(1)) * _UNIT_BYTES[match.group(2)]


@dataclass
class DaemonSetContainer:
    """The agent container of the DaemonSet, as parsed from the manifest."""

    pod: dict[str, Any]
    container: dict[str, Any]
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = DAEMONSET) -> DaemonSetContainer:
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert manifest["kind"] == "DaemonSet"
        pod = manifest["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        return cls(pod=pod, container=container, volumes=volumes)

    @property
    def memory_request(self) -> int:
        return quantity_bytes(self.container["resources"]["requests"]["memory"])

    @property
    def memory_limit(self) -> int:
        return quantity_bytes(self.container["resources"]["limits"]["memory"])

    @property
    def capabilities_added(self) -> list[str]:
        return list(self.container.get("securityContext", {}).get("capabilities", {}).get("add", []))

    @property
    def pods_mount_path(self) -> str:
        (mount,) = [m for m in self.container["volumeMounts"] if m["name"] == PODS_VOLUME]
        return str(mount["mountPath"])

    def environment(self, field_values: Mapping[str, str]) -> dict[str, str]:
        """The container's env as the kubelet builds it; ``field_values`` gives what the downward API
        would (fieldPath -> value) beyond the pod's own identity, which ``POD_FIELDS`` stands for."""
        return container_environment(self.container, {**POD_FIELDS, **field_values})

    def run_args(
        self,
        *,
        pods_dir: Path,
        field_values: Mapping[str, str],
        env_overrides: Mapping[str, str] = {},
        drop_capabilities: frozenset[str] = frozenset(),
    ) -> list[str]:
        """``podman run`` arguments for this container with the host's ``pods_dir`` as the hostPath.

        ``drop_capabilities`` leaves out capabilities the manifest adds, to show what they are for.
        """
        security = {**self.pod.get("securityContext", {}), **self.container.get("securityContext", {})}
        assert not security.get("privileged", False), "the DaemonSet must not be privileged"
        args: list[str] = []
        if "runAsUser" in security:
            args += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"]
        capabilities = security.get("capabilities", {})
        args += [f"--cap-drop={name}" for name in capabilities.get("drop", [])]
        args += [f"--cap-add={name}" for name in capabilities.get("add", []) if name not in drop_capabilities]
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        if security.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        # seccompProfile RuntimeDefault: podman applies its default profile unless told otherwise.
        assert security.get("seccompProfile", {}).get("type", "RuntimeDefault") == "RuntimeDefault"
        limits = self.container.get("resources", {}).get("limits", {})
        if "memory" in limits:
            args += ["--memory", str(quantity_bytes(limits["memory"]))]
        for mount in self.container.get("volumeMounts", []):
            args += self._mount_args(mount, pods_dir)
        env = {**self.environment(field_values), **env_overrides}
        for name, value in env.items():
            args += ["--env", f"{name}={value}"]
        return args

    def command(self) -> list[str]:
        return [str(arg) for arg in self.container.get("args", [])]

    def _mount_args(self, mount: Mapping[str, Any], pods_dir: Path) -> list[str]:
        volume = self.volumes[mount["name"]]
        target = mount["mountPath"]
        if "hostPath" in volume:
            assert mount["name"] == PODS_VOLUME, f"unexpected hostPath volume {mount['name']}"
            options = ["ro" if mount.get("readOnly") else "rw"]
            propagation = mount.get("mountPropagation", "None")
            options.append({"None": "rprivate", "HostToContainer": "rslave"}[propagation])
            return ["--volume", f"{pods_dir}:{target}:{','.join(options)}"]
        if "emptyDir" in volume:
            empty_dir = volume["emptyDir"] or {}
            assert empty_dir.get("medium") == "Memory", "only memory-backed emptyDirs map to a tmpfs"
            size = quantity_bytes(empty_dir["sizeLimit"]) if "sizeLimit" in empty_dir else None
            return ["--tmpfs", f"{target}:size={size}" if size else target]
        raise AssertionError(f"volume {mount['name']} has a type this test does not translate: {volume}")
