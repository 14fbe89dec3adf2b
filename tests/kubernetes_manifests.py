"""The project's Kubernetes deliverables (config/kubernetes/, the rules, the dashboard, the docs'
examples) as data, with the schema checks: shared by the tests that check them offline (tests/unit/)
and those that run them (the Helm chart, a real Prometheus: tests/integration/)."""

from __future__ import annotations

import importlib
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.conftest import ROOT
from tests.downward_api import container_environment
from tests.peers import require

K8S_DIR = ROOT / "config" / "kubernetes"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
JOB = "otel-vmi-hv"  # the job name the rules expect (the Service name, the ServiceMonitor's default)
CAMEL_TO_SNAKE = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
RULES = ROOT / "config" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "config" / "grafana" / "otel-vmi-hv-dashboard.json"
K8S_DOC = ROOT / "docs" / "kubernetes.md"
EXTRA_ENV = {"NODE_NAME", "KUBECONFIG"}  # read by the agent without being OPTIONS of their own
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}

# ------------------------------------------------------------------ schemas: Prometheus Operator kinds

_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer", "minimum": 1},
        "replacement": {"type": "string"},
        "action": {
            "enum": [
                "replace",
                "keep",
                "drop",
                "hashmod",
                "labelmap",
                "labeldrop",
                "labelkeep",
                "lowercase",
                "uppercase",
                "keepequal",
                "dropequal",
            ]
        },
    },
}

_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}

_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}, "labels": {"type": "object"}},
}

_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "matchLabels": {"type": "object", "minProperties": 1},
        "matchExpressions": {"type": "array"},
    },
}

# The fields of monitoring.coreos.com/v1 this project uses or may reasonably use; anything else is a typo.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {"type": "object"},
                "sampleLimit": {"type": "integer"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": _RELABEL},
                            "metricRelabelings": {"type": "array", "items": _RELABEL},
                        },
                    },
                },
            },
        },
    },
}

PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "keep_firing_for": _DURATION,
                                        "labels": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "annotations": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

CUSTOM_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA, "PrometheusRule": PROMETHEUS_RULE_SCHEMA}

# -------------------------------------------------------------------------- loading and checking


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


def daemonset() -> dict[str, Any]:
    return the("DaemonSet")


def agent_container() -> dict[str, Any]:
    containers = daemonset()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the DaemonSet should run exactly one container, the agent"
    container = containers[0]
    assert isinstance(container, dict)
    return container


def env_of(container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    entries = container.get("env") or []
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"duplicate env entries: {names}"
    return {entry["name"]: entry for entry in entries}


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [require("kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def _kubernetes_validate() -> Any:
    require("kubernetes-validate")
    return importlib.import_module("kubernetes_validate.utils")


def kubernetes_versions() -> list[str]:
    utils = _kubernetes_validate()
    newest = str(utils.latest_version())
    # The newest schemas shipped, and the oldest Kubernetes the manifests are meant for.
    return sorted({newest, "1.30"})


def kubernetes_schema_errors(doc: Mapping[str, Any], version: str) -> str | None:
    utils = _kubernetes_validate()
    try:
        utils.validate(dict(doc), version, strict=True)
    except utils.ValidationError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "<root>"
        return f"{doc['kind']}/{doc['metadata']['name']} at {where}: {error.message}"
    return None


def custom_schema_errors(doc: Mapping[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(CUSTOM_SCHEMAS[doc["kind"]])
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in validator.iter_errors(doc)
    ]


def resource_attributes_of(container: Mapping[str, Any]) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES as the kubelet gives it, with each downward-API value replaced by
    its fieldPath in braces (so the test sees where each attribute comes from)."""
    fields = {"metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName"}
    env = container_environment(container, {path: "{" + path + "}" for path in fields})
    pairs = (item.partition("=") for item in env["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    return {key.strip(): value.strip() for key, _, value in pairs}


def yaml_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)


def snake_relabelings(relabelings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A ServiceMonitor's relabelings (camelCase) as Prometheus' own scrape config writes them."""
    return [{CAMEL_TO_SNAKE.get(k, k): v for k, v in item.items()} for item in relabelings]
