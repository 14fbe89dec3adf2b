"""The Helm chart (charts/otel-vmi-hv) rendered by the real helm, against the kustomize manifests.

config/kubernetes/ describes the pod, its RBAC and its scraping; the chart repeats that in templates,
and these tests keep the two the same: with default values the chart renders the base's pod, RBAC
rules, Service and scrape, and with `mode=proc` the pod of config/kubernetes-variants/proc-only. The
alert rules and the dashboard are not repeated at all: the chart's files/ links to them, and `helm
package` stores their content. Every value values.yaml documents has a case below showing it switch
what it says, and every rendered object is checked against the Kubernetes schemas.
"""

from __future__ import annotations

import copy
import json
import subprocess
import tarfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from scripts.chart_values_doc import VALUES, documented
from tests.conftest import ROOT
from tests.kubernetes_manifests import (
    DASHBOARD,
    K8S_DIR,
    PROMETHEUS_RULE_SCHEMA,
    RULES,
    SERVICE_MONITOR_SCHEMA,
    env_of,
    kubernetes_schema_errors,
    kubernetes_versions,
    kustomize_build,
    load_documents,
    resource_attributes_of,
)
from tests.peers import require

CHART = ROOT / "charts" / "otel-vmi-hv"
PROC_ONLY = ROOT / "config" / "kubernetes-variants" / "proc-only"
RELEASE = NAMESPACE = "otel-vmi-hv"  # the base's names: `helm install otel-vmi-hv ... -n otel-vmi-hv`
JOB = "otel-vmi-hv"  # the scrape job the alert rules select
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
# Kubernetes Events about emulated VMIs, granted while `events.enabled` (the default).
EVENTS = {("", "events"), ("events.k8s.io", "events")}

Doc = dict[str, Any]


# --------------------------------------------------------------------------------------------- helpers


def helm(*args: str, values: Doc | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm; ``values`` are given as a values file on stdin (``--values -``)."""
    command = [require("helm"), *args]
    if values is not None:
        command += ["--values", "-"]
    return subprocess.run(
        command,
        input=yaml.safe_dump(values) if values is not None else None,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def parse(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


class Rendered:
    """The objects one rendering holds, by kind."""

    def __init__(self, docs: list[Doc]) -> None:
        self.docs = docs

    def of(self, kind: str) -> list[Doc]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def the(self, kind: str) -> Doc:
        found = self.of(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def template(self) -> Doc:
        template: Doc = self.the("DaemonSet")["spec"]["template"]
        return template

    @property
    def pod(self) -> Doc:
        spec: Doc = self.template["spec"]
        return spec

    @property
    def container(self) -> Doc:
        (container,) = self.pod["containers"]
        assert isinstance(container, dict)
        return container

    @property
    def env(self) -> dict[str, Doc]:
        return env_of(self.container)

    @property
    def endpoint(self) -> Doc:
        (endpoint,) = self.the("ServiceMonitor")["spec"]["endpoints"]
        assert isinstance(endpoint, dict)
        return endpoint


@cache
def _render(values_json: str, release: str) -> Rendered:
    result = helm("template", release, str(CHART), "--namespace", NAMESPACE, values=json.loads(values_json))
    assert result.returncode == 0, result.stderr
    return Rendered(parse(result.stdout))


def render(values: Doc | None = None, *, release: str = RELEASE) -> Rendered:
    return _render(json.dumps(values or {}, sort_keys=True), release)


@cache
def base() -> Rendered:
    return Rendered(kustomize_build(K8S_DIR))


@cache
def proc_only() -> Rendered:
    return Rendered(kustomize_build(PROC_ONLY))


def grants(role: Doc) -> dict[tuple[str, str], list[str]]:
    granted: dict[tuple[str, str], list[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted[(group, resource)] = sorted(rule["verbs"])
    return granted


def volumes(rendered: Rendered) -> dict[str, Doc]:
    return {volume["name"]: volume for volume in rendered.pod["volumes"]}


def mounts(rendered: Rendered) -> dict[str, Doc]:
    return {mount["name"]: mount for mount in rendered.container["volumeMounts"]}


# ------------------------------------------------------------------------------------ helm lint, package


@pytest.mark.parametrize(
    "values",
    [{}, {"mode": "proc", "dashboard": {"enabled": True}, "tls": {"enabled": True, "secretName": "c"}}],
    ids=["defaults", "variants"],
)
def test_helm_lint_strict_passes(values: Doc) -> None:
    result = helm("lint", "--strict", str(CHART), values=values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_helm_lint_strict_fails_on_a_broken_chart(tmp_path: Path) -> None:
    # The lint above is worth something only if it can fail.
    broken = tmp_path / "otel-vmi-hv"
    (broken / "templates").mkdir(parents=True)
    (broken / "Chart.yaml").write_text((CHART / "Chart.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (broken / "templates" / "x.yaml").write_text("kind: ConfigMap\nmetadata: {{ .Values.nope.nope }}\n")
    assert helm("lint", "--strict", str(broken)).returncode != 0


def test_chart_app_version_is_the_agents_version_and_the_default_image_tag() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]
    assert render().container["image"] == f"otel-vmi-hv:{project['version']}"


def test_helm_package_holds_the_rules_and_dashboard_files_and_renders_the_same(tmp_path: Path) -> None:
    result = helm("package", str(CHART), "--destination", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (archive,) = tmp_path.glob("otel-vmi-hv-*.tgz")
    with tarfile.open(archive) as tar:
        members = {member.name: member for member in tar.getmembers()}
        for name, source in (("rules.yml", RULES), ("otel-vmi-hv-dashboard.json", DASHBOARD)):
            member = members[f"otel-vmi-hv/files/{name}"]
            assert member.isfile(), f"{name} must be stored as a file, not as a link out of the chart"
            stored = tar.extractfile(member)
            assert stored is not None and stored.read() == source.read_bytes()
        assert "otel-vmi-hv/values.schema.json" in members
    values = {"dashboard": {"enabled": True}}
    packaged = helm("template", RELEASE, str(archive), "--namespace", NAMESPACE, values=values)
    assert packaged.returncode == 0, packaged.stderr
    assert parse(packaged.stdout) == render(values).docs


# ------------------------------------------------------------------- defaults: the kustomize base


def test_default_objects_are_the_bases_but_the_namespace() -> None:
    # Helm installs into a namespace that exists (or --create-namespace); docs/kubernetes.md says how to
    # give it the Pod Security level the base's Namespace object sets.
    chart = {(doc["kind"], doc["metadata"]["name"]) for doc in render().docs}
    kustomize = {(doc["kind"], doc["metadata"]["name"]) for doc in base().docs if doc["kind"] != "Namespace"}
    assert chart == kustomize
    for doc in render().docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]


def test_default_pod_is_the_bases_pod() -> None:
    chart, kustomize = render(), base()
    # env, mounts, host paths, security contexts, scheduling, ports, probes, image: the whole pod spec.
    assert chart.pod == kustomize.pod
    assert chart.template["metadata"]["annotations"] == kustomize.template["metadata"]["annotations"]
    assert chart.template["metadata"]["labels"].items() >= kustomize.template["metadata"]["labels"].items()
    chart_spec, base_spec = chart.the("DaemonSet")["spec"], kustomize.the("DaemonSet")["spec"]
    assert chart_spec["updateStrategy"] == base_spec["updateStrategy"]
    assert chart_spec["selector"]["matchLabels"].items() <= chart.template["metadata"]["labels"].items()


def test_proc_mode_pod_is_the_proc_only_variants_pod() -> None:
    chart, kustomize = render({"mode": "proc"}), proc_only()
    assert chart.pod == kustomize.pod
    assert chart.template["metadata"]["annotations"] == kustomize.template["metadata"]["annotations"]
    assert grants(chart.the("ClusterRole")) == grants(render().the("ClusterRole"))


def test_default_rbac_rules_are_the_bases() -> None:
    chart = grants(render().the("ClusterRole"))
    kustomize = grants(base().the("ClusterRole"))
    if not EVENTS & kustomize.keys():
        # The base does not grant Events yet (that work lands separately): everything else must match, and
        # the chart's Events grant is the one the agent needs. Once the base has it, the whole set must.
        events = {key: chart.pop(key, None) for key in EVENTS}
        assert events == {key: ["create", "patch"] for key in EVENTS}
    assert chart == kustomize
    chart_binding, base_binding = render().the("ClusterRoleBinding"), base().the("ClusterRoleBinding")
    assert chart_binding["roleRef"] == base_binding["roleRef"]
    assert chart_binding["subjects"] == base_binding["subjects"]
    assert render().pod["serviceAccountName"] == render().the("ServiceAccount")["metadata"]["name"]


def test_default_service_and_scrape_are_the_bases() -> None:
    chart, kustomize = render(), base()
    assert chart.the("Service")["spec"]["ports"] == kustomize.the("Service")["spec"]["ports"]
    assert chart.the("Service")["spec"]["clusterIP"] == "None"
    selector = chart.the("Service")["spec"]["selector"]
    assert selector.items() <= chart.template["metadata"]["labels"].items()
    assert chart.endpoint == kustomize.endpoint
    monitor_selector = chart.the("ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert monitor_selector.items() <= chart.the("Service")["metadata"]["labels"].items()


@pytest.mark.parametrize("release", [RELEASE, "monitoring"])
def test_scrape_job_is_the_one_the_rules_select_whatever_the_release(release: str) -> None:
    rendered = render(release=release)
    service = rendered.the("Service")
    # The Prometheus Operator names the job after the Service's `jobLabel` label, else the Service.
    job_label = rendered.the("ServiceMonitor")["spec"].get("jobLabel")
    job = service["metadata"]["labels"][job_label] if job_label else service["metadata"]["name"]
    assert job == JOB
    assert all(f'job="{JOB}"' in rule["expr"] for rule in alert_rules() if "job=" in rule["expr"])


def test_resource_attributes_name_the_rendered_daemonset_and_container() -> None:
    rendered = render(release="monitoring")
    attributes = resource_attributes_of(rendered.container)
    assert rendered.the("DaemonSet")["metadata"]["name"] == "monitoring-otel-vmi-hv"
    assert attributes["k8s.daemonset.name"] == "monitoring-otel-vmi-hv"
    assert attributes["k8s.container.name"] == rendered.container["name"]


def alert_rules() -> list[Doc]:
    return [rule for group in load_documents(RULES)[0]["groups"] for rule in group["rules"]]


def test_prometheus_rule_carries_exactly_the_groups_of_the_rules_file() -> None:
    (plain,) = load_documents(RULES)
    groups = render().the("PrometheusRule")["spec"]["groups"]
    assert groups == plain["groups"]
    assert groups == base().the("PrometheusRule")["spec"]["groups"]
    # Go templates in the rules ({{ $labels.name }}) reach Prometheus as they are, not rendered by helm.
    assert "{{ $labels.namespace }}" in json.dumps(groups)


# ------------------------------------------------------------------------- each value switches one thing


@dataclass(frozen=True)
class Case:
    """Values (beside the defaults) and what must change in the rendering; ``covers`` names the
    documented values it shows working."""

    name: str
    values: Doc
    check: Callable[[Rendered], None]
    covers: tuple[str, ...]


def _proc(r: Rendered) -> None:
    assert r.pod["securityContext"]["runAsUser"] == 65532 and r.pod["securityContext"]["runAsNonRoot"]
    assert "add" not in r.container["securityContext"]["capabilities"]
    assert "kubelet-pods" not in volumes(r) and "OTEL_VMI_HV_PODS_ROOT" not in r.env
    assert volumes(r)["host-proc"]["hostPath"]["path"] == "/proc"
    assert r.env["OTEL_VMI_HV_PROC_ROOT"]["value"] == mounts(r)["host-proc"]["mountPath"]


def _image(r: Rendered) -> None:
    assert r.container["image"] == "registry.example/kubevirt/otel-vmi-hv:1.2.3"
    assert r.container["imagePullPolicy"] == "Always"
    assert r.pod["imagePullSecrets"] == [{"name": "registry-credentials"}]


def _digest(r: Rendered) -> None:
    assert r.container["image"] == "registry.example/otel-vmi-hv@sha256:" + "a" * 64


def _no_priority_class(r: Rendered) -> None:
    assert "priorityClassName" not in r.pod
    assert render().pod["priorityClassName"] == "kubevirt-cluster-critical"


def _placement(r: Rendered) -> None:
    # Helm merges a mapping into the default, like virt-operator adds kubernetes.io/os; a list replaces it.
    assert r.pod["nodeSelector"] == {"kubernetes.io/os": "linux", "node-role.kubernetes.io/virt": ""}
    assert r.pod["tolerations"] == [{"key": "virt-only", "operator": "Exists", "effect": "NoSchedule"}]
    terms = r.pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == "node.example.com/retired"
    assert r.the("DaemonSet")["spec"]["updateStrategy"] == {"type": "OnDelete"}


def _resources(r: Rendered) -> None:
    assert r.container["resources"] == {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"memory": "1Gi"},
    }


def _pod_metadata(r: Rendered) -> None:
    assert r.template["metadata"]["annotations"]["example.com/team"] == "virt"
    assert r.template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert r.template["metadata"]["labels"]["example.com/tier"] == "node"
    assert r.pod["securityContext"]["seLinuxOptions"] == {"type": "spc_t"}


def _kubelet_dir(r: Rendered) -> None:
    assert volumes(r)["kubelet-pods"]["hostPath"]["path"] == "/var/lib/k0s/kubelet/pods"
    assert mounts(r)["kubelet-pods"]["mountPath"] == "/pods"


def _otlp(r: Rendered) -> None:
    names = [entry["name"] for entry in r.container["env"]]
    assert names.count("OTEL_EXPORTER_OTLP_ENDPOINT") == 1
    assert r.env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "https://collector.example:4318"
    assert r.env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "http/protobuf"
    assert r.env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"]["name"] == "otlp-auth"
    assert names[-1] == "OTEL_EXPORTER_OTLP_HEADERS", "extra variables come after the ones they may use"


def _no_events(r: Rendered) -> None:
    assert r.env["OTEL_VMI_HV_EVENTS"] == {"name": "OTEL_VMI_HV_EVENTS", "value": "false"}
    assert not EVENTS & grants(r.the("ClusterRole")).keys()
    assert grants(render().the("ClusterRole")).keys() >= EVENTS
    assert "OTEL_VMI_HV_EVENTS" not in render().env


def _tls(r: Rendered) -> None:
    assert volumes(r)["tls"]["secret"] == {"secretName": "otel-vmi-hv-cert"}
    mount = mounts(r)["tls"]
    assert mount["readOnly"] is True
    assert r.env["OTEL_VMI_HV_TLS_CERT_FILE"]["value"] == mount["mountPath"] + "/tls.crt"
    assert r.env["OTEL_VMI_HV_TLS_KEY_FILE"]["value"] == mount["mountPath"] + "/tls.key"
    for probe in ("livenessProbe", "readinessProbe"):
        assert r.container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert r.endpoint["scheme"] == "https" and r.endpoint["tlsConfig"] == {"insecureSkipVerify": True}
    assert r.template["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    assert "scheme" not in render().endpoint and "tls" not in volumes(render())


def _no_rbac(r: Rendered) -> None:
    assert not r.of("ClusterRole") and not r.of("ClusterRoleBinding")
    assert r.of("ServiceAccount")


def _own_account(r: Rendered) -> None:
    assert not r.of("ServiceAccount")
    assert r.pod["serviceAccountName"] == "agents"
    assert r.the("ClusterRoleBinding")["subjects"][0]["name"] == "agents"


def _named_account(r: Rendered) -> None:
    account = r.the("ServiceAccount")
    assert account["metadata"]["name"] == r.pod["serviceAccountName"] == "agents"
    assert account["metadata"]["annotations"] == {"example.com/role": "reader"}


def _service(r: Rendered) -> None:
    service = r.the("Service")
    assert (
        service["spec"]["ports"][0]["port"] == 8443 and service["spec"]["ports"][0]["targetPort"] == "metrics"
    )
    assert service["metadata"]["annotations"] == {"example.com/owner": "virt"}


def _no_service(r: Rendered) -> None:
    assert not r.of("Service")


def _monitors_off(r: Rendered) -> None:
    assert not r.of("ServiceMonitor") and not r.of("PrometheusRule")
    assert r.of("Service") and r.pod == render().pod


def _monitor_settings(r: Rendered) -> None:
    assert r.endpoint["interval"] == "15s" and r.endpoint["scrapeTimeout"] == "5s"
    assert r.the("ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert r.the("PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def _dashboard(r: Rendered) -> None:
    (config_map,) = r.of("ConfigMap")
    assert config_map["metadata"]["namespace"] == "grafana"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["labels"]["example.com/team"] == "virt"
    assert (
        render({"dashboard": {"enabled": True}}).the("ConfigMap")["metadata"]["labels"]["grafana_dashboard"]
        == "1"
    )
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "KubeVirt"}
    assert config_map["data"] == {"otel-vmi-hv-dashboard.json": DASHBOARD.read_text(encoding="utf-8")}
    assert not render().of("ConfigMap"), "off by default"


def _names(r: Rendered) -> None:
    assert r.the("DaemonSet")["metadata"]["name"] == "agent"
    assert r.template["metadata"]["labels"]["app.kubernetes.io/name"] == "vmi-hv"


CASES = [
    Case("proc mode", {"mode": "proc"}, _proc, ("mode",)),
    Case(
        "custom image",
        {
            "image": {
                "repository": "registry.example/kubevirt/otel-vmi-hv",
                "tag": "1.2.3",
                "pullPolicy": "Always",
            },
            "imagePullSecrets": [{"name": "registry-credentials"}],
        },
        _image,
        ("image.repository", "image.tag", "image.pullPolicy", "imagePullSecrets"),
    ),
    Case(
        "image digest",
        {"image": {"repository": "registry.example/otel-vmi-hv", "digest": "sha256:" + "a" * 64}},
        _digest,
        ("image.digest",),
    ),
    Case("no priority class", {"priorityClassName": ""}, _no_priority_class, ("priorityClassName",)),
    Case(
        "node placement",
        {
            "nodeSelector": {"node-role.kubernetes.io/virt": ""},
            "tolerations": [{"key": "virt-only", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "node.example.com/retired", "operator": "DoesNotExist"}
                                ]
                            }
                        ]
                    }
                }
            },
            "updateStrategy": {"type": "OnDelete"},
        },
        _placement,
        ("nodeSelector", "tolerations", "affinity", "updateStrategy"),
    ),
    Case(
        "resources",
        {"resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}},
        _resources,
        ("resources",),
    ),
    Case(
        "pod metadata and SELinux",
        {
            "podAnnotations": {"example.com/team": "virt"},
            "podLabels": {"example.com/tier": "node"},
            "seLinuxOptions": {"type": "spc_t"},
        },
        _pod_metadata,
        ("podAnnotations", "podLabels", "seLinuxOptions"),
    ),
    Case(
        "kubelet root dir", {"kubeletPodsDir": "/var/lib/k0s/kubelet/pods"}, _kubelet_dir, ("kubeletPodsDir",)
    ),
    Case(
        "OTLP through extraEnv",
        {
            "extraEnv": [
                {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "https://collector.example:4318"},
                {"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "http/protobuf"},
                {
                    "name": "OTEL_EXPORTER_OTLP_HEADERS",
                    "valueFrom": {"secretKeyRef": {"name": "otlp-auth", "key": "headers"}},
                },
            ]
        },
        _otlp,
        ("extraEnv",),
    ),
    Case("events off", {"events": {"enabled": False}}, _no_events, ("events.enabled",)),
    Case(
        "TLS",
        {
            "tls": {"enabled": True, "secretName": "otel-vmi-hv-cert"},
            "serviceMonitor": {"tlsConfig": {"insecureSkipVerify": True}},
        },
        _tls,
        ("tls.enabled", "tls.secretName", "serviceMonitor.tlsConfig"),
    ),
    Case("no RBAC", {"rbac": {"create": False}}, _no_rbac, ("rbac.create",)),
    Case(
        "existing service account",
        {"serviceAccount": {"create": False, "name": "agents"}},
        _own_account,
        ("serviceAccount.create",),
    ),
    Case(
        "named service account",
        {"serviceAccount": {"name": "agents", "annotations": {"example.com/role": "reader"}}},
        _named_account,
        ("serviceAccount.name", "serviceAccount.annotations"),
    ),
    Case(
        "service settings",
        {"service": {"port": 8443, "annotations": {"example.com/owner": "virt"}}},
        _service,
        ("service.port", "service.annotations"),
    ),
    Case(
        "no service",
        {"service": {"enabled": False}, "serviceMonitor": {"enabled": False}},
        _no_service,
        ("service.enabled",),
    ),
    Case(
        "monitors off",
        {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}},
        _monitors_off,
        ("serviceMonitor.enabled", "prometheusRule.enabled"),
    ),
    Case(
        "monitor settings",
        {
            "serviceMonitor": {
                "interval": "15s",
                "scrapeTimeout": "5s",
                "labels": {"release": "kube-prometheus-stack"},
            },
            "prometheusRule": {"labels": {"release": "kube-prometheus-stack"}},
        },
        _monitor_settings,
        (
            "serviceMonitor.interval",
            "serviceMonitor.scrapeTimeout",
            "serviceMonitor.labels",
            "prometheusRule.labels",
        ),
    ),
    Case(
        "dashboard",
        {
            "dashboard": {
                "enabled": True,
                "namespace": "grafana",
                "annotations": {"grafana_folder": "KubeVirt"},
                "labels": {"grafana_dashboard": "1", "example.com/team": "virt"},
            }
        },
        _dashboard,
        ("dashboard.enabled", "dashboard.namespace", "dashboard.annotations", "dashboard.labels"),
    ),
    Case(
        "names",
        {"nameOverride": "vmi-hv", "fullnameOverride": "agent"},
        _names,
        ("nameOverride", "fullnameOverride"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_value_switches_what_it_says(case: Case) -> None:
    case.check(render(case.values))


def documented_values() -> set[str]:
    return set(documented(VALUES.read_text(encoding="utf-8")))


def test_every_documented_value_has_a_case() -> None:
    covered = {path for case in CASES for path in case.covers}
    assert documented_values() - covered == set()
    assert covered - documented_values() == set(), "a case covers a value values.yaml does not document"


# ---------------------------------------------------------------------------- schemas of what renders

# The Prometheus Operator's endpoint TLS settings (SafeTLSConfig plus the CA file fields), for `tls`.
_TLS_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "insecureSkipVerify": {"type": "boolean"},
        "serverName": {"type": "string"},
        "ca": {"type": "object"},
        "cert": {"type": "object"},
        "keySecret": {"type": "object"},
        "caFile": {"type": "string"},
        "certFile": {"type": "string"},
        "keyFile": {"type": "string"},
    },
}


def _service_monitor_schema() -> Doc:
    schema = copy.deepcopy(SERVICE_MONITOR_SCHEMA)
    schema["properties"]["spec"]["properties"]["endpoints"]["items"]["properties"]["tlsConfig"] = _TLS_CONFIG
    return schema


def test_every_rendered_object_validates_against_its_schema() -> None:
    custom = {"ServiceMonitor": _service_monitor_schema(), "PrometheusRule": PROMETHEUS_RULE_SCHEMA}
    renderings = [render(), *(render(case.values) for case in CASES)]
    checked = set()
    for rendered in renderings:
        for doc in rendered.docs:
            if doc["kind"] in CUSTOM_KINDS:
                errors = [
                    e.message for e in jsonschema.Draft202012Validator(custom[doc["kind"]]).iter_errors(doc)
                ]
                assert errors == [], f"{doc['kind']}: {errors}"
                continue
            for version in kubernetes_versions():
                error = kubernetes_schema_errors(doc, version)
                assert error is None, f"Kubernetes {version}: {error}"
            checked.add(doc["kind"])
    assert checked == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Service",
        "ConfigMap",
    }


# ------------------------------------------------------------------------------ the values schema


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("serviceMonitor.enabled=maybe", "/serviceMonitor/enabled"),
        ("mode=libvirt", "/mode"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("service.port=0", "/service/port"),
        ("serviceMonitor.interval=soon", "/serviceMonitor/interval"),
        ("priorityClass=high", "priorityClass"),
        ("tls.enabled=true", "/tls/secretName"),
        ("extraEnv[0].value=x", "/extraEnv/0"),
    ],
)
def test_schema_refuses_a_bad_value_naming_it(setting: str, named: str) -> None:
    result = helm("template", RELEASE, str(CHART), "--set", setting)
    assert result.returncode != 0, f"{setting} was accepted"
    assert named in result.stderr, result.stderr


def test_schema_accepts_the_documented_examples() -> None:
    # The same settings as the refused ones above, well formed.
    for setting in (
        "serviceMonitor.enabled=false",
        "mode=proc",
        "service.port=8443",
        "serviceMonitor.interval=1m",
    ):
        result = helm("template", RELEASE, str(CHART), "--set", setting)
        assert result.returncode == 0, f"{setting}: {result.stderr}"
