"""Offline checks of the full-stack files: docker-compose.yml, Dockerfile, .dockerignore, collector-config/.

No container engine is needed: the Compose file is validated against the Compose specification schema
vendored by check-jsonschema, the Collector config against the component list of the pinned Collector
version (collector-config/components-<version>.txt), the cross-file ports by parsing, and prometheus.yml
by promtool.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.peers import require

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COLLECTOR_DIR = ROOT / "collector-config"
OTELCOL = COLLECTOR_DIR / "otelcol.yaml"
PROMETHEUS = COLLECTOR_DIR / "prometheus.yml"
DEMO_NODE = ROOT / "config" / "demo-node.xml"

COLLECTOR_SERVICE = "otel-collector"
AGENT_SERVICE = "agent"
COLLECTOR_IMAGE = "otel/opentelemetry-collector-contrib"
AGENT_METRICS_PORT = 9464  # OTEL_EXPORTER_PROMETHEUS_PORT default

COMPONENT_KINDS = {
    "receivers": "receiver",
    "processors": "processor",
    "exporters": "exporter",
    "extensions": "extension",
    "connectors": "connector",
}
PIPELINE_SIGNALS = {"traces", "metrics", "logs", "profiles"}


# --------------------------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name}: top level is not a mapping"
    return data


def compose_schema() -> dict[str, Any]:
    """The Compose specification schema that check-jsonschema vendors (no network access)."""
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


def compose_errors(document: Any) -> list[str]:
    schema = compose_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in validator.iter_errors(document)
    ]


def service(compose: Mapping[str, Any], name: str) -> dict[str, Any]:
    services = compose.get("services", {})
    assert name in services, f"docker-compose.yml has no service {name!r}"
    svc = services[name]
    assert isinstance(svc, dict)
    return svc


def environment(svc: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, list or mapping form, as a dict of strings."""
    env = svc.get("environment", {})
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {k: v for k, v in pairs}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def published_container_ports(svc: Mapping[str, Any]) -> set[int]:
    """Container-side TCP ports a service publishes, from the short ("H:C", "IP:H:C", "C") or long syntax."""
    ports: set[int] = set()
    for entry in svc.get("ports", []):
        if isinstance(entry, dict):
            if entry.get("protocol", "tcp") == "tcp":
                ports.add(int(entry["target"]))
            continue
        spec, _, proto = str(entry).partition("/")
        if proto not in ("", "tcp"):
            continue
        container = spec.rsplit(":", 1)[-1]
        first, _, last = container.partition("-")
        ports.update(range(int(first), int(last or first) + 1))
    return ports


def host_port(address: str) -> tuple[str, int]:
    """Split "host:port" (the Collector's endpoint form)."""
    host, sep, port = address.rpartition(":")
    assert sep and port.isdigit(), f"{address!r} is not host:port"
    return host, int(port)


def bind_mounts(svc: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(source, target) of a service's bind mounts: short syntax with a path as source, or long syntax."""
    for volume in svc.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield str(volume["source"]), str(volume["target"])
            continue
        parts = str(volume).split(":")
        if len(parts) >= 2 and parts[0].startswith((".", "/")):
            yield parts[0], parts[1]


def load_components(version: str) -> dict[str, set[str]]:
    """collector-config/components-<version>.txt: lines "<kind> <type> <module>", '#' starts a comment."""
    path = COLLECTOR_DIR / f"components-{version}.txt"
    assert path.is_file(), f"no component list {path.name} for the pinned Collector {version}"
    known: dict[str, set[str]] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        assert len(fields) == 3, f"{path.name}:{number}: expected '<kind> <type> <module>', got {raw!r}"
        kind, ctype, _module = fields
        assert kind in COMPONENT_KINDS.values(), f"{path.name}:{number}: unknown kind {kind!r}"
        known.setdefault(kind, set()).add(ctype)
    return known


def collector_version(compose: Mapping[str, Any]) -> str:
    image = str(service(compose, COLLECTOR_SERVICE).get("image", ""))
    name, _, tag = image.partition(":")
    assert name == COLLECTOR_IMAGE, f"{COLLECTOR_SERVICE} should run {COLLECTOR_IMAGE}, not {image!r}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{image!r}: pin an exact version tag (not latest)"
    return tag


def component_problems(config: Mapping[str, Any], known: Mapping[str, set[str]]) -> list[str]:
    """Everything wrong with how a Collector config references components."""
    problems: list[str] = []
    defined: dict[str, set[str]] = {}
    for section, kind in COMPONENT_KINDS.items():
        ids = set((config.get(section) or {}).keys())
        defined[section] = ids
        for cid in sorted(ids):
            ctype = cid.split("/", 1)[0]
            if ctype not in known.get(kind, set()):
                problems.append(f"{section}.{cid}: no {kind} of type {ctype!r} in the pinned distribution")

    svc = config.get("service") or {}
    pipelines = svc.get("pipelines") or {}
    if not pipelines:
        problems.append("service.pipelines is empty")
    used: dict[str, set[str]] = {section: set() for section in COMPONENT_KINDS}
    for pid, pipeline in pipelines.items():
        if pid.split("/", 1)[0] not in PIPELINE_SIGNALS:
            problems.append(f"pipeline {pid!r}: signal must be one of {sorted(PIPELINE_SIGNALS)}")
        for section in ("receivers", "processors", "exporters"):
            for cid in (pipeline or {}).get(section) or []:
                used[section].add(cid)
                # A connector may stand as a receiver or an exporter of a pipeline.
                if cid not in defined[section] and cid not in defined["connectors"]:
                    problems.append(f"pipeline {pid!r} uses {section[:-1]} {cid!r}, which is not defined")
        if not (pipeline or {}).get("receivers") or not (pipeline or {}).get("exporters"):
            problems.append(f"pipeline {pid!r} needs at least one receiver and one exporter")

    for ext in svc.get("extensions") or []:
        used["extensions"].add(ext)
        if ext not in defined["extensions"]:
            problems.append(f"service.extensions lists {ext!r}, which is not defined")
    used["connectors"] = used["receivers"] & used["exporters"] & defined["connectors"]

    for section, ids in defined.items():
        for cid in sorted(ids - used[section]):
            problems.append(f"{section}.{cid} is defined but never used")
    return problems


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and line continuations joined."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    result = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in instructions:
        if instruction != "ENV":
            continue
        tokens = shlex.split(args)
        if tokens and "=" not in tokens[0]:  # legacy form: ENV KEY value
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            key, _, value = token.partition("=")
            env[key] = value
    return env


def dockerfile_copies(instructions: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY/ADD from the build context (not --from=<stage>)."""
    copies = []
    for instruction, args in instructions:
        if instruction not in ("COPY", "ADD"):
            continue
        tokens = shlex.split(args)
        if any(t.startswith("--from") for t in tokens):
            continue
        paths = [t for t in tokens if not t.startswith("--")]
        copies.append((paths[:-1], paths[-1]))
    return copies


def copied_destinations(copies: list[tuple[list[str], str]]) -> dict[PurePosixPath, str]:
    """Image path of every single file copied → its source in the build context."""
    files: dict[PurePosixPath, str] = {}
    for sources, dest in copies:
        for source in sources:
            if source.endswith("/"):
                continue  # a directory; its files keep their names under dest
            target = (
                PurePosixPath(dest) / PurePosixPath(source).name
                if dest.endswith("/")
                else PurePosixPath(dest)
            )
            files[target] = source
    return files


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore excludes `path` (last matching rule wins; a directory rule covers its files)."""
    excluded = False
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        if any(fnmatch.fnmatchcase(prefix, pat) for prefix in prefixes) or (
            pat.startswith("**/") and any(fnmatch.fnmatchcase(p, pat[3:]) for p in parts)
        ):
            excluded = not negate
    return excluded


def prometheus_targets(config: Mapping[str, Any]) -> dict[str, list[str]]:
    return {
        job["job_name"]: [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
        for job in config.get("scrape_configs", [])
    }


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def otelcol() -> dict[str, Any]:
    return load_yaml(OTELCOL)


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return load_yaml(PROMETHEUS)


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------- (a) the Compose specification


def test_compose_file_conforms_to_the_compose_specification(compose: dict[str, Any]) -> None:
    assert compose_errors(compose) == []


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (lambda c: c["services"]["agent"].update(ports={"9464": 9464}), "ports"),
        (lambda c: c["services"]["prometheus"].update(port=["9090:9090"]), "port"),
        (lambda c: c["services"]["agent"].update(depends_on={"otel-collector": {"condition": "up"}}), "up"),
        (lambda c: c.update(service={}), "service"),
    ],
    ids=["ports-not-a-list", "misspelt-key", "bad-depends-on-condition", "unknown-top-level-key"],
)
def test_compose_schema_rejects_broken_files(compose: dict[str, Any], mutation: Any, expected: str) -> None:
    broken = json.loads(json.dumps(compose))
    mutation(broken)
    errors = compose_errors(broken)
    assert errors, "the schema accepted a broken compose file"
    assert any(expected in e for e in errors), errors


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if "build" in svc:
            continue
        image = str(svc.get("image", ""))
        assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{name}: image {image!r} is not pinned to a version"


def test_compose_bind_mount_sources_exist(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for source, _target in bind_mounts(svc):
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name} mounts {source}, which is not in the repository"


def test_collector_reads_the_mounted_config(compose: dict[str, Any]) -> None:
    svc = service(compose, COLLECTOR_SERVICE)
    mounts = dict(bind_mounts(svc))
    assert mounts.get("./collector-config/otelcol.yaml"), (
        "the Collector does not mount collector-config/otelcol.yaml"
    )
    command = svc.get("command", [])
    args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    configs = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    configs += [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    assert configs == [mounts["./collector-config/otelcol.yaml"]]


def test_prometheus_reads_the_mounted_config(compose: dict[str, Any]) -> None:
    svc = service(compose, "prometheus")
    mounts = dict(bind_mounts(svc))
    target = mounts.get("./collector-config/prometheus.yml")
    assert target, "prometheus does not mount collector-config/prometheus.yml"
    assert f"--config.file={target}" in svc.get("command", [])


# --------------------------------------------------------------- (b) Collector components and pipelines


def test_component_list_matches_the_pinned_collector_image(compose: dict[str, Any]) -> None:
    known = load_components(collector_version(compose))
    for kind in ("receiver", "processor", "exporter", "extension"):
        assert known.get(kind), f"the component list has no {kind}s"


def test_collector_config_references_only_known_and_used_components(
    compose: dict[str, Any], otelcol: dict[str, Any]
) -> None:
    known = load_components(collector_version(compose))
    assert component_problems(otelcol, known) == []


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (
            lambda c: c["exporters"].update({"prometheusexporter": {}}),
            "no exporter of type 'prometheusexporter'",
        ),
        (lambda c: c["processors"].update({"batch/x": {}}), "processors.batch/x is defined but never used"),
        (lambda c: c["service"]["pipelines"]["metrics"]["exporters"].append("logging"), "'logging'"),
        (lambda c: c["service"]["extensions"].append("zpages"), "'zpages', which is not defined"),
        (lambda c: c["service"]["pipelines"].update({"metric/2": {}}), "signal must be one of"),
        (lambda c: c["extensions"].update({"pprof": {}}), "no extension of type 'pprof'"),
    ],
    ids=[
        "unknown-type",
        "unused",
        "undefined-in-pipeline",
        "undefined-extension",
        "bad-signal",
        "not-in-list",
    ],
)
def test_component_check_catches_mistakes(
    compose: dict[str, Any], otelcol: dict[str, Any], mutation: Any, expected: str
) -> None:
    broken = json.loads(json.dumps(otelcol))
    mutation(broken)
    problems = component_problems(broken, load_components(collector_version(compose)))
    assert any(expected in p for p in problems), problems


def test_collector_pipeline_shape(otelcol: dict[str, Any]) -> None:
    metrics = otelcol["service"]["pipelines"]["metrics"]
    assert metrics["receivers"] == ["otlp"]
    assert metrics["processors"][0] == "memory_limiter", "memory_limiter must run first"
    assert "batch" in metrics["processors"]
    assert set(metrics["exporters"]) == {"prometheus", "debug"}
    assert otelcol["exporters"]["debug"]["verbosity"] == "detailed"
    # The four metric labels only: resource attributes go to target_info, not onto every series.
    assert otelcol["exporters"]["prometheus"]["resource_to_telemetry_conversion"]["enabled"] is False


# --------------------------------------------------------------------------------------- (c) ports agree


def collector_ports(otelcol: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    protocols = otelcol["receivers"]["otlp"]["protocols"]
    return {
        "otlp-grpc": host_port(protocols["grpc"]["endpoint"]),
        "otlp-http": host_port(protocols["http"]["endpoint"]),
        "prometheus": host_port(otelcol["exporters"]["prometheus"]["endpoint"]),
        "health_check": host_port(otelcol["extensions"]["health_check"]["endpoint"]),
    }


def test_collector_listens_on_all_interfaces(otelcol: dict[str, Any]) -> None:
    # Since v0.104 the default host is localhost, unreachable from other containers and published ports.
    for name, (host, _port) in collector_ports(otelcol).items():
        assert host == "0.0.0.0", f"{name} listens on {host!r}; other containers could not reach it"


def test_collector_ports_are_published(compose: dict[str, Any], otelcol: dict[str, Any]) -> None:
    published = published_container_ports(service(compose, COLLECTOR_SERVICE))
    for name, (_host, port) in collector_ports(otelcol).items():
        assert port in published, f"{name} port {port} is not published by {COLLECTOR_SERVICE}"


def test_agent_metrics_port_is_published_and_exposed(compose: dict[str, Any], dockerfile: list[Any]) -> None:
    env = environment(service(compose, AGENT_SERVICE))
    port = int(env.get("OTEL_EXPORTER_PROMETHEUS_PORT", AGENT_METRICS_PORT))
    assert port in published_container_ports(service(compose, AGENT_SERVICE))
    exposed = {int(p.split("/")[0]) for i, a in dockerfile if i == "EXPOSE" for p in a.split()}
    assert port in exposed


def test_prometheus_scrapes_the_agent_and_the_collector_exporter(
    compose: dict[str, Any], otelcol: dict[str, Any], prometheus: dict[str, Any]
) -> None:
    env = environment(service(compose, AGENT_SERVICE))
    agent_port = int(env.get("OTEL_EXPORTER_PROMETHEUS_PORT", AGENT_METRICS_PORT))
    exporter_port = collector_ports(otelcol)["prometheus"][1]
    targets = {t for ts in prometheus_targets(prometheus).values() for t in ts}
    assert f"{AGENT_SERVICE}:{agent_port}" in targets
    assert f"{COLLECTOR_SERVICE}:{exporter_port}" in targets
    services = set(compose["services"])
    for target in targets:
        host, _port = host_port(target)
        assert host in services, f"prometheus.yml scrapes {target}, but there is no compose service {host!r}"


def test_collector_job_keeps_exporter_labels_and_drops_scope_labels(prometheus: dict[str, Any]) -> None:
    targets = prometheus_targets(prometheus)
    collector_jobs = [
        job
        for job in prometheus["scrape_configs"]
        if any(host_port(t)[0] == COLLECTOR_SERVICE for t in targets[job["job_name"]])
    ]
    assert len(collector_jobs) == 1
    job = collector_jobs[0]
    assert job.get("honor_labels") is True
    drops = [r["regex"] for r in job.get("metric_relabel_configs", []) if r.get("action") == "labeldrop"]
    assert any(re.fullmatch(rx, "otel_scope_name") and re.fullmatch(rx, "otel_scope_version") for rx in drops)
    assert not any(
        re.fullmatch(rx, lbl) for rx in drops for lbl in ("namespace", "name", "node", "hypervisor_type")
    )


def test_agent_pushes_to_the_collector_receiver(compose: dict[str, Any], otelcol: dict[str, Any]) -> None:
    env = environment(service(compose, AGENT_SERVICE))
    protocol = env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
    endpoint = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    assert endpoint, "the agent has no OTLP endpoint"
    url = urlsplit(endpoint)
    assert url.hostname == COLLECTOR_SERVICE
    receiver = {"grpc": "otlp-grpc", "http/protobuf": "otlp-http"}[protocol]
    assert url.port == collector_ports(otelcol)[receiver][1], f"{endpoint} is not the {receiver} receiver"
    # A scheme-less gRPC endpoint means TLS, which the Collector's receiver does not offer here.
    assert url.scheme == "http"
    assert "otlp" in env.get("OTEL_METRICS_EXPORTER", "prometheus,otlp").split(",")
    depends = service(compose, AGENT_SERVICE).get("depends_on", {})
    assert COLLECTOR_SERVICE in depends


# ------------------------------------------------------------------------------- (d) image and demo node


def test_demo_node_definition_exists() -> None:
    assert DEMO_NODE.is_file(), f"{DEMO_NODE.relative_to(ROOT)} is missing (the image's default URI needs it)"


def test_dockerfile_default_uri_points_at_a_copied_file(dockerfile: list[tuple[str, str]]) -> None:
    env = dockerfile_env(dockerfile)
    assert env.get("OTEL_VMI_HV_SOURCE") == "libvirt"
    uri = env.get("OTEL_VMI_HV_LIBVIRT_URI", "")
    assert uri.startswith("test:///"), uri
    image_path = PurePosixPath(uri.removeprefix("test://"))
    copied = copied_destinations(dockerfile_copies(dockerfile))
    assert image_path in copied, (
        f"{image_path} is not copied into the image (copies: {sorted(map(str, copied))})"
    )
    assert (ROOT / copied[image_path]).resolve() == DEMO_NODE


def test_dockerfile_copies_only_existing_files_not_dockerignored(dockerfile: list[tuple[str, str]]) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for sources, _dest in dockerfile_copies(dockerfile):
        for source in sources:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
            assert not dockerignore_excludes(patterns, source.rstrip("/")), f".dockerignore excludes {source}"


def test_dockerignore_rule_matching() -> None:
    assert dockerignore_excludes(["tests"], "tests/unit/x.py")
    assert dockerignore_excludes(["**/__pycache__"], "otel_vmi_hv/__pycache__")
    assert not dockerignore_excludes(["config/*", "!config/demo-node.xml"], "config/demo-node.xml")
    assert not dockerignore_excludes(["tests"], "otel_vmi_hv")


def test_dockerfile_runtime_contract(dockerfile: list[tuple[str, str]]) -> None:
    stages = [args for i, args in dockerfile if i == "FROM"]
    assert len(stages) >= 2, "expected a multi-stage build"
    last_stage = max(n for n, (i, _a) in enumerate(dockerfile) if i == "FROM")
    runtime = dockerfile[last_stage:]
    users = [args for i, args in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] == "65532", "the runtime image must run as uid 65532"
    assert json.loads(next(a for i, a in runtime if i == "ENTRYPOINT")) == ["otel-vmi-hv"]
    assert json.loads(next(a for i, a in runtime if i == "CMD")) == ["run"]
    healthcheck = next(a for i, a in runtime if i == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    runtime_installs = " ".join(a for i, a in runtime if i == "RUN" and "apt-get install" in a)
    assert "libvirt0" in runtime_installs
    assert not re.search(r"\b(gcc|libvirt-dev|pkg-config)\b", runtime_installs), (
        "build tools in the runtime stage"
    )


# ------------------------------------------------------------------------------------------- (e) promtool


def test_promtool_accepts_prometheus_config() -> None:
    result = subprocess.run(
        [require("promtool"), "check", "config", str(PROMETHEUS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    # Guards the check above against a promtool that accepts anything: a duration without its unit.
    text = PROMETHEUS.read_text(encoding="utf-8")
    assert "scrape_interval: 10s" in text
    broken = tmp_path / "prometheus.yml"
    broken.write_text(text.replace("scrape_interval: 10s", "scrape_interval: 10"), encoding="utf-8")
    result = subprocess.run(
        [require("promtool"), "check", "config", str(broken)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0, result.stdout
