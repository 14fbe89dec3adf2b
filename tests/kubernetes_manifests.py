"""The project's Kubernetes manifests (config/kubernetes/) as data, for the tests that check them
offline (tests/unit/test_kubernetes_manifests.py) and against a real Prometheus (tests/integration/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

K8S_DIR = ROOT / "config" / "kubernetes"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
JOB = "otel-vmi-hv"  # the job name the rules expect (the Service name, the ServiceMonitor's default)
CAMEL_TO_SNAKE = {"sourceLabels": "source_labels", "targetLabel": "target_label"}


def load_documents(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
    return docs


def load_kustomization() -> dict[str, Any]:
    (doc,) = load_documents(KUSTOMIZATION)
    return doc


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.iterdir() if p.suffix in (".yaml", ".yml") and p != KUSTOMIZATION)


def all_manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in manifest_files() for doc in load_documents(path)]


def of_kind(kind: str, manifests: list[tuple[str, dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    return [
        doc for _, doc in (manifests if manifests is not None else all_manifests()) if doc["kind"] == kind
    ]


def the(kind: str) -> dict[str, Any]:
    found = of_kind(kind)
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def snake_relabelings(relabelings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A ServiceMonitor's relabelings (camelCase) as Prometheus' own scrape config writes them."""
    return [{CAMEL_TO_SNAKE.get(k, k): v for k, v in item.items()} for item in relabelings]
