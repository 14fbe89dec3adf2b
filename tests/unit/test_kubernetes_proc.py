"""Offline checks of the proc deliverables: the kustomize Component config/kubernetes/components/proc
(applied on the base by an overlay) and the proc-only variant config/kubernetes-variants/proc-only,
built with `kubectl kustomize` and validated against the official Kubernetes schemas, as
test_kubernetes_manifests.py does for the base."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_vmi_hv.config import OPTIONS
from tests.kubernetes_manifests import (
    CUSTOM_KINDS,
    EXTRA_ENV,
    K8S_DIR,
    agent_container,
    env_of,
    kubernetes_schema_errors,
    kubernetes_versions,
    kustomize_build,
    resource_attributes_of,
)

ROOT = K8S_DIR.parent.parent
COMPONENT = K8S_DIR / "components" / "proc"
PROC_ONLY = ROOT / "config" / "kubernetes-variants" / "proc-only"


def daemonset_of(built: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = [doc for doc in built if doc["kind"] == "DaemonSet"]
    return ds


def container_of(ds: dict[str, Any]) -> dict[str, Any]:
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def host_paths(ds: dict[str, Any]) -> dict[str, str]:
    """volume name -> host path, for every hostPath volume."""
    volumes = ds["spec"]["template"]["spec"]["volumes"]
    return {v["name"]: v["hostPath"]["path"] for v in volumes if "hostPath" in v}


def with_component(tmp_path: Path) -> list[dict[str, Any]]:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize takes relative paths only
        "resources": [os.path.relpath(K8S_DIR, overlay)],
        "components": [os.path.relpath(COMPONENT, overlay)],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    return kustomize_build(overlay)


def assert_schema_valid(built: list[dict[str, Any]]) -> None:
    for version in kubernetes_versions():
        for doc in built:
            if doc["kind"] not in CUSTOM_KINDS:
                error = kubernetes_schema_errors(doc, version)
                assert error is None, f"Kubernetes {version}: {error}"


def assert_reads_host_proc_read_only(ds: dict[str, Any]) -> None:
    container = container_of(ds)
    (proc_volume,) = [name for name, path in host_paths(ds).items() if path == "/proc"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == proc_volume]
    assert mount.get("readOnly") is True
    # The variable names the very directory the host's /proc is mounted on.
    assert env_of(container)["OTEL_VMI_HV_PROC_ROOT"]["value"] == mount["mountPath"]


def test_component_on_the_base_validates_and_mounts_host_proc_read_only(tmp_path: Path) -> None:
    built = with_component(tmp_path)
    assert_schema_valid(built)
    ds = daemonset_of(built)
    assert_reads_host_proc_read_only(ds)
    # The component only adds: the base's libvirt access (pods root) is still there as the fallback.
    assert "/var/lib/kubelet/pods" in host_paths(ds).values()


def test_proc_only_variant_validates() -> None:
    assert_schema_valid(kustomize_build(PROC_ONLY))


def test_proc_only_variant_runs_non_root_with_no_capability_and_no_pods_root() -> None:
    built = kustomize_build(PROC_ONLY)
    ds = daemonset_of(built)
    pod = ds["spec"]["template"]["spec"]
    container = container_of(ds)
    assert_reads_host_proc_read_only(ds)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False and security.get("privileged") is False
    assert security["readOnlyRootFilesystem"] is True
    assert not pod.get("hostPID") and not pod.get("hostNetwork")
    # /proc is the only host path: no kubelet pods root, hence no launcher socket or domain file.
    assert set(host_paths(ds).values()) == {"/proc"}
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/pods" not in mounted and "/tmp" in mounted
    env = env_of(container)
    assert "OTEL_VMI_HV_PODS_ROOT" not in env
    known = {option.env for option in OPTIONS} | EXTRA_ENV
    assert {name for name in env if not name.startswith("OTEL_RESOURCE_ATTRIBUTES_")} <= known
    # The same resource identity as the base: the downward-API variables survive the patch.
    assert resource_attributes_of(container) == resource_attributes_of(agent_container())
    # Everything else of the base is still there (RBAC stays get/list/watch).
    kinds = sorted(doc["kind"] for doc in built)
    assert kinds == sorted(doc["kind"] for doc in kustomize_build(K8S_DIR))


def test_proc_only_schema_check_is_not_vacuous() -> None:
    ds = daemonset_of(kustomize_build(PROC_ONLY))
    container_of(ds)["securityContext"]["capabilities"]["drop"] = "ALL"  # a string, not a list
    with pytest.raises(AssertionError):
        assert_schema_valid([ds])
