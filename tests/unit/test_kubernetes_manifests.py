"""Offline checks of the cluster deliverables: config/kubernetes/, the alert rules, the Grafana dashboard,
and the examples in docs/kubernetes.md and docs/runbooks/README.md (the runbooks themselves:
tests/unit/test_alert_rules.py).

No cluster is needed. Built-in kinds are validated against the official Kubernetes schemas shipped by
kubernetes-validate; the Prometheus Operator kinds against the small schemas below. promtool checks the
alert rules (their unit tests run in tests/unit/test_alert_rules.py); `kubectl kustomize` builds the
kustomization and the overlay example. The tests that need a binary skip when it is absent. A real
Prometheus applying the ServiceMonitor's relabelings: tests/integration/test_service_monitor_relabelings.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from otel_vmi_hv.config import OPTIONS
from tests.conftest import ROOT
from tests.downward_api import references
from tests.kubernetes_manifests import (
    CUSTOM_KINDS,
    DASHBOARD,
    EXTRA_ENV,
    JOB,
    K8S_DIR,
    K8S_DOC,
    RULES,
    agent_container,
    all_manifests,
    custom_schema_errors,
    daemonset,
    env_of,
    kubernetes_schema_errors,
    kubernetes_versions,
    kustomize_build,
    load_documents,
    load_kustomization,
    manifest_files,
    of_kind,
    resource_attributes_of,
    snake_relabelings,
    the,
    yaml_blocks,
)
from tests.peers import require

RUNBOOKS_README = ROOT / "docs" / "runbooks" / "README.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"
DOCKERFILE = ROOT / "Dockerfile"

KUBELET_PODS = "/var/lib/kubelet/pods"
ALLOWED_CAPABILITIES = {"DAC_OVERRIDE"}

# What the agent exports, in Prometheus names (docs/metrics.md, "The metric" and "Self-metrics").
AGENT_METRICS = {
    "kubevirt_vmi_hypervisor_info",
    "otel_vmi_hv_vmis",
    "otel_vmi_hv_detection_duration_seconds_bucket",
    "otel_vmi_hv_detection_duration_seconds_sum",
    "otel_vmi_hv_detection_duration_seconds_count",
    "otel_vmi_hv_detection_errors_total",
    "otel_vmi_hv_events_total",
    "otel_vmi_hv_watch_handler_errors_total",
    "otel_vmi_hv_libvirt_connections",
    "otel_vmi_hv_relists_total",
    "otel_vmi_hv_watch_restarts_total",
    "otel_vmi_hv_last_sync_timestamp_seconds",
    "otel_vmi_hv_vmi_emulation_info",
    "otel_vmi_hv_node_kvm_available",
    "otel_vmi_hv_node_accelerator_available",
    "otel_vmi_hv_detection_mismatches_total",
    "otel_vmi_hv_otlp_export_failures_total",
    "otel_vmi_hv_label_values_replaced_total",
}
PROCESS_METRICS = {
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_threads",
}
# kube_pod_container_resource_limits: kube-state-metrics, for the memory alert (with a fallback).
QUERYABLE_METRICS = (
    AGENT_METRICS | PROCESS_METRICS | {"kubevirt_vmi_info", "up", "kube_pod_container_resource_limits"}
)

NAMESPACED_KINDS = {"ServiceAccount", "DaemonSet", "Service", "ServiceMonitor", "PrometheusRule"}


# --------------------------------------------------------------------------------------------- helpers


def container_port(container: Mapping[str, Any], ref: int | str) -> int:
    """The containerPort a probe or Service targetPort refers to (by number or by name)."""
    for port in container.get("ports") or []:
        if ref in (port.get("name"), port["containerPort"]):
            return int(port["containerPort"])
    raise AssertionError(f"port {ref!r} is not a port of container {container['name']}")


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in load_documents(RULES)[0]["groups"] for rule in group["rules"] if "alert" in rule
    ]


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("promtool"), *args], capture_output=True, text=True, check=False, timeout=60
    )


# -------------------------------------------------------------------- (a) schemas: built-in kinds


def test_builtin_kinds_validate_against_the_kubernetes_schemas() -> None:
    checked = 0
    for version in kubernetes_versions():
        for filename, doc in all_manifests():
            if doc["kind"] in CUSTOM_KINDS:
                continue
            error = kubernetes_schema_errors(doc, version)
            assert error is None, f"{filename} (Kubernetes {version}): {error}"
            checked += 1
    assert checked >= 2 * 6


def test_schema_check_rejects_an_unknown_field() -> None:
    # Guards the test above against a validator that accepts anything (strict = no unknown fields).
    broken = json.loads(json.dumps(daemonset()))
    broken["spec"]["template"]["spec"]["containers"][0]["readOnly"] = True
    assert kubernetes_schema_errors(broken, kubernetes_versions()[-1]) is not None


def test_built_kustomization_validates_against_the_kubernetes_schemas() -> None:
    built = kustomize_build(K8S_DIR)
    version = kubernetes_versions()[-1]
    for doc in built:
        if doc["kind"] not in CUSTOM_KINDS:
            assert kubernetes_schema_errors(doc, version) is None


# --------------------------------------------------------------- (a) schemas: Prometheus Operator kinds


def test_prometheus_operator_kinds_match_their_schemas() -> None:
    for kind in sorted(CUSTOM_KINDS):
        assert custom_schema_errors(the(kind)) == []


def test_custom_schema_check_rejects_a_misspelt_field() -> None:
    broken = json.loads(json.dumps(the("ServiceMonitor")))
    broken["spec"]["endpoints"][0]["honourLabels"] = False
    assert custom_schema_errors(broken)
    broken = json.loads(json.dumps(the("PrometheusRule")))
    broken["spec"]["groups"][0]["rules"][0]["for"] = "10 minutes"
    assert custom_schema_errors(broken)


def test_prometheus_rule_and_plain_rules_file_are_identical() -> None:
    plain = load_documents(RULES)
    assert len(plain) == 1 and set(plain[0]) == {"groups"}
    assert the("PrometheusRule")["spec"]["groups"] == plain[0]["groups"]


def test_promtool_accepts_the_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    text = RULES.read_text(encoding="utf-8")
    broken = tmp_path / "rules.yml"
    broken.write_text(text.replace("group_left (", "group_left ((", 1), encoding="utf-8")
    assert broken.read_text(encoding="utf-8") != text
    assert run_promtool("check", "rules", str(broken)).returncode != 0


# -------------------------------------------------------------------- (a) the alerts' behaviour
# promtool unit tests of every alert, with labels and annotations, are files in config/prometheus/tests/,
# run by tests/unit/test_alert_rules.py.


# ------------------------------------------------------------------------------------ (b) RBAC


def test_rbac_is_read_access_to_vmis_nodes_the_kubevirt_cr_a_list_of_pods_and_events_written() -> None:
    manifests = all_manifests()
    assert of_kind("Role", manifests) == []
    assert of_kind("RoleBinding", manifests) == []
    roles = of_kind("ClusterRole", manifests)
    assert len(roles) == 1, "exactly one ClusterRole"
    role = roles[0]
    assert "aggregationRule" not in role
    granted: dict[tuple[str, str], list[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames or nonResourceURLs"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted[(group, resource)] = sorted(rule["verbs"])
    read = ["get", "list", "watch"]
    assert granted == {
        ("kubevirt.io", "virtualmachineinstances"): read,
        ("", "nodes"): read,  # the agent's own Node: allocatable devices.kubevirt.io/kvm (or mshv)
        ("kubevirt.io", "kubevirts"): read,  # the KubeVirt CR: useEmulation, the hypervisor
        # An emulated VMI's launcher pod, found by label (a name to `get` it by is not known); no watch.
        ("", "pods"): ["list"],
        # The only write: Events on emulated VMIs, created, or patched when they exist already.
        ("", "events"): ["create", "patch"],
        ("events.k8s.io", "events"): ["create", "patch"],
    }


def test_binding_grants_that_role_to_the_daemonsets_service_account() -> None:
    manifests = all_manifests()
    bindings = of_kind("ClusterRoleBinding", manifests)
    assert len(bindings) == 1
    (binding,) = bindings
    (role,) = of_kind("ClusterRole", manifests)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = daemonset()["spec"]["template"]["spec"].get("serviceAccountName")
    assert account, "the DaemonSet must name its ServiceAccount"
    assert [sa["metadata"]["name"] for sa in of_kind("ServiceAccount", manifests)] == [account]
    (subject,) = binding["subjects"]
    assert subject["kind"] == "ServiceAccount" and subject["name"] == account
    # Left for kustomize's `namespace:`; if set, it must be the kustomization's.
    assert subject.get("namespace") in (None, load_kustomization()["namespace"])
    assert daemonset()["spec"]["template"]["spec"].get("automountServiceAccountToken", True) is True


def test_built_binding_subject_is_in_the_namespace_of_the_service_account() -> None:
    built = kustomize_build(K8S_DIR)
    (binding,) = of_kind("ClusterRoleBinding", [("", doc) for doc in built])
    (account,) = of_kind("ServiceAccount", [("", doc) for doc in built])
    (subject,) = binding["subjects"]
    assert subject["namespace"] == account["metadata"]["namespace"] == load_kustomization()["namespace"]


# ------------------------------------------------------------------------------- (c) the DaemonSet


def test_node_name_comes_from_the_downward_api() -> None:
    env = env_of(agent_container())
    assert env["OTEL_VMI_HV_NODE_NAME"].get("valueFrom") == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "value" not in env["OTEL_VMI_HV_NODE_NAME"]


def test_kubelet_pods_directory_is_mounted_read_only_at_the_pods_root() -> None:
    spec = daemonset()["spec"]["template"]["spec"]
    container = agent_container()
    env = env_of(container)
    pods_root = env["OTEL_VMI_HV_PODS_ROOT"]["value"]
    host_volumes = [v["name"] for v in spec["volumes"] if v.get("hostPath", {}).get("path") == KUBELET_PODS]
    assert len(host_volumes) == 1, f"one hostPath volume of {KUBELET_PODS}"
    mounts = [m for m in container["volumeMounts"] if m["name"] == host_volumes[0]]
    assert len(mounts) == 1
    (mount,) = mounts
    assert mount["mountPath"].rstrip("/") == pods_root.rstrip("/")
    assert mount.get("readOnly") is True
    assert mount.get("mountPropagation") == "HostToContainer"
    assert not mount.get("subPath")


def test_every_host_path_is_the_kubelet_pods_directory() -> None:
    volumes = daemonset()["spec"]["template"]["spec"]["volumes"]
    assert [v["hostPath"]["path"] for v in volumes if "hostPath" in v] == [KUBELET_PODS]


def test_probes_and_scraping_use_the_agents_http_port() -> None:
    container = agent_container()
    env = env_of(container)
    default_port = next(o.default for o in OPTIONS if o.env == "OTEL_EXPORTER_PROMETHEUS_PORT")
    http_port = int(env.get("OTEL_EXPORTER_PROMETHEUS_PORT", {}).get("value") or str(default_port))
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container_port(container, container[probe]["httpGet"]["port"]) == http_port
    service = the("Service")
    assert service["spec"].get("clusterIP") == "None", "headless"
    assert (
        service["spec"]["selector"].items() <= daemonset()["spec"]["template"]["metadata"]["labels"].items()
    )
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert container_port(container, ports["metrics"]["targetPort"]) == http_port
    assert ports["metrics"]["port"] == http_port
    monitor = the("ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint.get("path", "/metrics") == "/metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    annotations = daemonset()["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == http_port


def test_pod_is_root_but_not_privileged() -> None:
    spec = daemonset()["spec"]["template"]["spec"]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key), key
    pod_context = spec.get("securityContext", {})
    assert pod_context.get("seccompProfile") == {"type": "RuntimeDefault"}
    context = agent_container()["securityContext"]
    assert context.get("privileged") is not True and pod_context.get("privileged") is not True
    assert context.get("allowPrivilegeEscalation") is False
    assert context.get("readOnlyRootFilesystem") is True
    assert context.get("seccompProfile", {"type": "RuntimeDefault"}) == {"type": "RuntimeDefault"}
    capabilities = context.get("capabilities", {})
    assert capabilities.get("drop") == ["ALL"]
    assert set(capabilities.get("add", [])) <= ALLOWED_CAPABILITIES
    assert "procMount" not in context
    assert not any("hostPort" in port for port in agent_container().get("ports", []))


def test_read_only_root_filesystem_leaves_tmp_writable() -> None:
    # The agent makes short symlinks to long socket paths in a temporary directory.
    spec = daemonset()["spec"]["template"]["spec"]
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    assert any(
        m["mountPath"] == "/tmp" and m["name"] in empty_dirs and not m.get("readOnly")
        for m in agent_container()["volumeMounts"]
    )


def test_every_env_var_is_an_agent_setting_with_a_valid_value() -> None:
    options = {option.env: option for option in OPTIONS}
    entries = env_of(agent_container())
    # Downward-API values that exist only to be expanded into another variable, as $(NAME).
    referenced = {name for entry in entries.values() for name in references(str(entry.get("value", "")))}
    for name, entry in entries.items():
        assert name in options or name in EXTRA_ENV or name in referenced, (
            f"{name} is not a setting the agent reads"
        )
        value = entry.get("value")
        if name in options and value:  # empty counts as unset; valueFrom is resolved by Kubernetes
            try:
                options[name].parse(value)
            except ValueError as error:
                raise AssertionError(f"{name}={value!r}: {error or options[name].allowed}") from None


def test_env_references_name_variables_defined_before_them() -> None:
    """The kubelet expands $(NAME) only for a variable defined earlier in the list; otherwise the
    agent would get the literal text "$(NAME)" as, say, its pod name."""
    defined: set[str] = set()
    for entry in agent_container()["env"]:
        for name in references(str(entry.get("value", ""))):
            assert name in defined, f"{entry['name']} refers to $({name}), not defined before it"
        defined.add(entry["name"])


def test_resource_attributes_name_this_pod_with_the_semantic_conventions() -> None:
    from opentelemetry.semconv.resource import ResourceAttributes as Semconv

    container = agent_container()
    attributes = resource_attributes_of(container)
    assert attributes == {
        Semconv.K8S_NAMESPACE_NAME: "{metadata.namespace}",
        Semconv.K8S_POD_NAME: "{metadata.name}",
        Semconv.K8S_POD_UID: "{metadata.uid}",
        # Not in the downward API: literals, which must be this manifest's names.
        Semconv.K8S_DAEMONSET_NAME: daemonset()["metadata"]["name"],
        Semconv.K8S_CONTAINER_NAME: container["name"],
    }


def test_resource_attribute_check_sees_a_container_renamed_without_its_attribute() -> None:
    container = dict(agent_container(), name="renamed")
    assert resource_attributes_of(container)["k8s.container.name"] != container["name"]


def dockerfile_env_names() -> set[str]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    names: set[str] = set()
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            names.update(re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", line.strip()[4:]))
    return names


def test_daemonset_overrides_the_images_demo_settings() -> None:
    # The image defaults to the embedded demo node; on a node every such OTEL_VMI_HV_* must be replaced.
    env = env_of(agent_container())
    image_settings = {name for name in dockerfile_env_names() if name.startswith("OTEL_VMI_HV_")}
    assert image_settings, "the Dockerfile was expected to set the demo's OTEL_VMI_HV_* variables"
    assert image_settings <= env.keys()
    assert env["OTEL_VMI_HV_SOURCE"]["value"] == "kubernetes"


# ------------------------------------------------------------------------------ (d) kustomization


def test_kustomization_lists_every_manifest_once_and_nothing_else() -> None:
    kustomization = load_kustomization()
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), "duplicate resources"
    assert sorted(resources) == sorted(p.name for p in manifest_files())
    for resource in resources:
        assert (K8S_DIR / resource).is_file(), resource
    assert kustomization.get("namespace")


def test_manifests_hard_code_no_namespace() -> None:
    for filename, doc in all_manifests():
        assert "namespace" not in doc["metadata"], f"{filename}: leave the namespace to kustomize"
    kinds = {doc["kind"] for _, doc in all_manifests()}
    assert kinds >= NAMESPACED_KINDS


def test_namespace_object_allows_the_daemonsets_host_path() -> None:
    # Pod Security "baseline" and "restricted" forbid hostPath volumes.
    (namespace,) = of_kind("Namespace")
    assert namespace["metadata"]["name"] == load_kustomization()["namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_kustomize_builds_every_object_into_one_namespace() -> None:
    built = kustomize_build(K8S_DIR)
    namespace = load_kustomization()["namespace"]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for _, d in all_manifests()
    )
    for doc in built:
        if doc["kind"] in NAMESPACED_KINDS:
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]


def runbook_urls(built: list[dict[str, Any]]) -> dict[str, str]:
    (rule,) = of_kind("PrometheusRule", [("", doc) for doc in built])
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]
    return {r["alert"]: r["annotations"]["runbook_url"] for r in alerts}


def test_built_rules_take_the_runbook_base_from_the_kustomization() -> None:
    (generator,) = load_kustomization()["configMapGenerator"]
    (base,) = [item.removeprefix("base=") for item in generator["literals"]]
    urls = runbook_urls(kustomize_build(K8S_DIR))
    assert urls == {alert["alert"]: f"{base}{alert['alert']}.md" for alert in alert_rules()}
    # The plain rules file carries the same default base.
    assert urls == {alert["alert"]: alert["annotations"]["runbook_url"] for alert in alert_rules()}


def test_doc_overlay_points_every_runbook_url_at_its_own_copy(tmp_path: Path) -> None:
    (block,) = [b for b in yaml_blocks(RUNBOOKS_README.read_text(encoding="utf-8")) if "runbook-urls" in b]
    overlay = yaml.safe_load(block)
    overlay_dir = tmp_path / "deploy" / "otel-vmi-hv"
    overlay_dir.mkdir(parents=True)
    overlay["resources"] = [os.path.relpath(K8S_DIR, overlay_dir)]
    overlay["transformers"] = [os.path.relpath(K8S_DIR / "runbook-urls", overlay_dir)]
    (overlay_dir / "kustomization.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")
    (patch,) = yaml.safe_load(overlay["patches"][0]["patch"])
    built = kustomize_build(overlay_dir)
    defaults = runbook_urls(kustomize_build(K8S_DIR))
    urls = runbook_urls(built)
    assert urls == {alert: f"{patch['value']}{alert}.md" for alert in defaults}
    assert not set(urls.values()) & set(defaults.values())
    assert of_kind("ConfigMap", [("", doc) for doc in built]) == [], "the base is never applied"


# ------------------------------------------------------------------------------ (e) the dashboard

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (names, not functions, keywords or label names)."""
    names = set(re.findall(r"__name__\s*=\s*\"([^\"]+)\"", expr))
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    for match in re.finditer(r"(?<![\w.:$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(word)
    return names


def test_metric_name_extraction() -> None:
    assert metric_names('sum by (le) (rate(a_bucket{x="y", z=~"$node"}[$__rate_interval]))') == {"a_bucket"}
    assert metric_names("count(b) or vector(0)") == {"b"}
    assert metric_names('x * on (namespace, name) group_left (os) topk by (name) (1, y{a="or b"})') == {
        "x",
        "y",
    }
    assert metric_names("time() - c offset 5m > 900") == {"c"}
    assert metric_names('{__name__="d", job="j"}') == {"d"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(e[5m])))") == {"e"}


def load_dashboard() -> dict[str, Any]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(dashboard, dict)
    return dashboard


def panels_of(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable."""
    queries = []
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            queries.append((f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            inner = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text)
            assert inner, f"variable {variable['name']}: expected label_values(<selector>, <label>)"
            queries.append((f"variable {variable['name']}", inner.group(1)))
    return queries


def test_dashboard_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] == 39
    assert dashboard.get("uid") and dashboard.get("title")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    node = variables["node"]
    assert node["type"] == "query"
    assert node["query"]["query"] == "label_values(kubevirt_vmi_hypervisor_info, node)"
    assert node["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    panels = [p for p in panels_of(dashboard) if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in panels_of(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]
    tables = [p for p in panels if p["type"] == "table"]
    for hypervisor in ("qemu-tcg", "unknown"):
        assert any(
            f'hypervisor_type="{hypervisor}"' in t["expr"] and t.get("instant") and t.get("format") == "table"
            for p in tables
            for t in p["targets"]
        ), f"an instant table of {hypervisor} VMIs"


def test_dashboard_queries_use_only_exported_metrics() -> None:
    queries = dashboard_queries(load_dashboard())
    used: set[str] = set()
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= QUERYABLE_METRICS, f"{where}: unknown metric(s) {names - QUERYABLE_METRICS}"
        used |= names
    # Every family the agent exports has a panel.
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in AGENT_METRICS}
    assert families <= {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}


def test_dashboard_metric_check_catches_a_misspelt_metric() -> None:
    dashboard = load_dashboard()
    panel = next(p for p in panels_of(dashboard) if p["type"] == "timeseries")
    panel["targets"][0]["expr"] = panel["targets"][0]["expr"].replace("otel_vmi_hv_", "otel_vmihv_")
    panel["targets"][0]["expr"] = panel["targets"][0]["expr"].replace("kubevirt_vmi_", "kubevirt_vm_")
    names: set[str] = set()
    for _, expr in dashboard_queries(dashboard):
        names |= metric_names(expr)
    assert not names <= QUERYABLE_METRICS


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = []
    for index, (_, expr) in enumerate(dashboard_queries(load_dashboard())):
        concrete = re.sub(r"\$\{?__\w+\}?", "5m", expr)  # $__rate_interval and friends are durations
        concrete = re.sub(r"\$\{?\w+\}?", ".*", concrete)  # the other variables sit in regex matchers
        rules.append({"record": f"dashboard_query_{index}", "expr": concrete})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_expressions_use_only_exported_metrics() -> None:
    rules = [rule for group in load_documents(RULES)[0]["groups"] for rule in group["rules"]]
    known = QUERYABLE_METRICS | {rule["record"] for rule in rules if "record" in rule}
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names and names <= known, f"{rule.get('alert', rule.get('record'))}: {names - known}"


def documented_metric_names() -> set[str]:
    """Prometheus names of the metric and self-metrics docs/metrics.md documents."""
    text = METRICS_DOC.read_text(encoding="utf-8")
    names = {"kubevirt_vmi_hypervisor_info"} if "kubevirt_vmi_hypervisor_info" in text else set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for name, kind in re.findall(r"^\|\s*`(otel_vmi_hv_\w+)`\s*\|\s*(\w+)\s*\|", text, re.MULTILINE):
        base = name.removesuffix("_total") if kind == "counter" else name
        names.update(base + suffix for suffix in suffixes[kind])
    return names


def test_metric_set_matches_the_metrics_page() -> None:
    assert documented_metric_names() == AGENT_METRICS


# --------------------------------------------------------------------- the examples in docs/kubernetes.md


def doc_block(needle: str) -> dict[str, Any]:
    blocks = [b for b in yaml_blocks(K8S_DOC.read_text(encoding="utf-8")) if needle in b]
    assert len(blocks) == 1, f"one yaml block with {needle!r} in {K8S_DOC.name}"
    doc = yaml.safe_load(blocks[0])
    assert isinstance(doc, dict)
    return doc


def test_doc_scrape_config_is_valid_and_relabels_like_the_service_monitor(tmp_path: Path) -> None:
    config = doc_block("scrape_configs:")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    (endpoint,) = the("ServiceMonitor")["spec"]["endpoints"]
    defaults = {"action": "replace", "replacement": "$1"}
    assert [{**defaults, **r} for r in job["metric_relabel_configs"]] == [
        {**defaults, **r} for r in snake_relabelings(endpoint["metricRelabelings"])
    ]
    # Debian's Prometheus is built without Kubernetes service discovery, so promtool checks the job with a
    # static target in its place; the discovery part is checked here.
    (discovery,) = job.pop("kubernetes_sd_configs")
    assert discovery["role"] == "pod"
    assert discovery["namespaces"]["names"] == [load_kustomization()["namespace"]]
    job["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_doc_overlay_moves_everything_and_merges_env(tmp_path: Path) -> None:
    overlay = doc_block("kind: Kustomization")
    overlay_dir = tmp_path / "deploy" / "otel-vmi-hv"
    overlay_dir.mkdir(parents=True)
    overlay["resources"] = [os.path.relpath(K8S_DIR, overlay_dir)]
    overlay["images"][0]["newName"] = "registry.invalid/otel-vmi-hv"  # the doc has a placeholder
    (overlay_dir / "kustomization.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")
    built = kustomize_build(overlay_dir)
    namespace = overlay["namespace"]
    assert namespace != load_kustomization()["namespace"]
    pairs = [("", doc) for doc in built]
    (ns,) = of_kind("Namespace", pairs)
    assert ns["metadata"]["name"] == namespace
    (binding,) = of_kind("ClusterRoleBinding", pairs)
    assert binding["subjects"][0]["namespace"] == namespace
    (ds,) = of_kind("DaemonSet", pairs)
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("registry.invalid/otel-vmi-hv:")
    env = env_of(container)
    assert env["OTEL_VMI_HV_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert (
        env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"]
        != env_of(agent_container())["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"]
    )
