"""Settings: every environment variable and flag the agent honours, parsed and checked once.

The table ``OPTIONS`` is the single source of truth: the CLI builds its flags from it, the README's
configuration reference is generated from it (``otel-vmi-hv config-doc``), and a test keeps the two
in step. Validation happens before anything starts, so a typo in a DaemonSet is a crash-loop with a
one-line reason (exit status 2) instead of an agent that silently exports nothing.
"""

from __future__ import annotations

import os
import re
import socket
import string
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

EXPORTERS = ("prometheus", "otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")
SOURCES = ("auto", "kubernetes", "libvirt")
LOG_LEVELS = ("debug", "info", "warning", "error")
URI_PLACEHOLDERS = ("pod_uid", "vmi_uid", "namespace", "name", "mode", "pods_root")

STANDALONE_LIBVIRT_URI = "qemu:///system"
# KubeVirt runs one virtqemud per launcher pod; its socket sits in an emptyDir of that pod
# (DESIGN.md section 7). The DaemonSet mounts /var/lib/kubelet/pods at /pods so the path stays
# under the 108-byte sun_path limit.
KUBEVIRT_LIBVIRT_URI = (
    "qemu+unix:///{mode}?socket={pods_root}/{pod_uid}/volumes/kubernetes.io~empty-dir"
    "/libvirt-runtime/virtqemud-sock"
)
IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable, the value and what is allowed."""


@dataclass(frozen=True, slots=True)
class Settings:
    metrics_exporters: tuple[str, ...]
    prometheus_host: str
    prometheus_port: int
    otlp_protocol: str
    otlp_endpoint: str | None
    export_interval_ms: int
    export_timeout_ms: int
    service_name: str
    resource_attributes: tuple[tuple[str, str], ...]
    sdk_disabled: bool
    node_name: str
    source: str
    libvirt_uri: str
    libvirt_timeout: float
    log_level: str
    pods_root: str
    resync_interval: float
    kubeconfig: str | None = None
    proc_root: str | None = None  # the host's /proc for the proc detection method; None: off
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    kvm_device: str = "/dev/kvm"
    relist_spread: float = 10.0
    watch_silence_timeout: float = 180.0
    # What each value came from ("env", "flag", "default"), for check-config.
    origins: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def exports_prometheus(self) -> bool:
        return "prometheus" in self.metrics_exporters

    @property
    def exports_otlp(self) -> bool:
        return "otlp" in self.metrics_exporters


# ----------------------------------------------------------------------------- value parsers


def _choice(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError
        return value

    return parse


def parse_duration(raw: str) -> float:
    """Seconds from ``5s``, ``500ms``, ``2m`` or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*", raw)
    if not match:
        raise ValueError
    number = float(match.group(1))
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
    return number * scale


def _duration_between(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        seconds = parse_duration(raw)
        if not low <= seconds <= high:
            raise ValueError
        return seconds

    return parse


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip(), 10)
        if not low <= value <= high:
            raise ValueError
        return value

    return parse


def _positive_number(raw: str) -> float:
    value = float(raw)
    if not 0 < value < float("inf"):  # also false for NaN
        raise ValueError
    return value


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise ValueError
    return value == "true"


def _exporters(raw: str) -> tuple[str, ...]:
    names = [part.strip().lower() for part in raw.split(",") if part.strip()]
    if not names or any(name not in EXPORTERS for name in names):
        raise ValueError
    if "none" in names and len(names) > 1:
        raise ConfigError(f"OTEL_METRICS_EXPORTER={raw!r}: 'none' cannot be combined with other exporters")
    if names == ["none"]:
        return ()
    return tuple(dict.fromkeys(names))


def _host(raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError
    return value


def _endpoint(raw: str) -> str:
    value = raw.strip()
    parsed = urllib.parse.urlsplit(value if "://" in value else f"//{value}")
    if parsed.scheme not in ("", "http", "https") or not parsed.hostname:
        raise ValueError
    if parsed.username or parsed.password:
        # It would end up in logs and check-config; credentials belong in the headers variable.
        raise ConfigError(
            "credentials in the URL are refused (they would show in logs): "
            "put them in OTEL_EXPORTER_OTLP_HEADERS"
        )
    _ = parsed.port  # raises ValueError for a port that is not a number or out of range
    return value


def _key_values(raw: str) -> tuple[tuple[str, str], ...]:
    """W3C-baggage-like ``k=v,k2=v2`` (OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS)."""
    pairs = []
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError
        pairs.append((urllib.parse.unquote(key.strip()), urllib.parse.unquote(value.strip())))
    return tuple(pairs)


def _node_name(raw: str) -> str:
    value = raw.strip()
    if not value or len(value) > 253 or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError
    return value


def _libvirt_uri(raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
    except ValueError:
        raise ConfigError(
            f"OTEL_VMI_HV_LIBVIRT_URI={raw!r}: unbalanced braces; placeholders are "
            + ", ".join("{" + p + "}" for p in URI_PLACEHOLDERS)
        ) from None
    unknown = [name for name in fields if name not in URI_PLACEHOLDERS]
    if unknown:
        raise ConfigError(
            f"OTEL_VMI_HV_LIBVIRT_URI={raw!r}: unknown placeholder {{{unknown[0]}}}; allowed: "
            + ", ".join("{" + p + "}" for p in URI_PLACEHOLDERS)
        )
    return value


def _path(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError
    return value


def _absolute_path(raw: str) -> str:
    value = _path(raw)
    if not os.path.isabs(value):
        raise ValueError
    return value


def _existing_directory(raw: str) -> str:
    value = _absolute_path(raw)
    if not os.path.isdir(value):
        raise ValueError
    return value


def _text(raw: str) -> str:
    value = raw.strip()
    if not value or not value.isprintable():
        raise ValueError
    return value


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class Option:
    env: str
    field: str | None  # Settings field it fills; None for variables only validated here
    default: str | None  # as documented; None means "computed" (see default_doc) or "SDK default"
    allowed: str
    help: str
    parse: Callable[[str], Any]
    flag: str | None = None
    default_doc: str | None = None


def _default_node_name(environ: Mapping[str, str]) -> str:
    return environ.get("NODE_NAME") or socket.gethostname()


OPTIONS: tuple[Option, ...] = (
    Option(
        "OTEL_METRICS_EXPORTER",
        "metrics_exporters",
        "prometheus,otlp",
        "comma list of prometheus, otlp, console, or none alone",
        "Which exporters run: Prometheus pull (/metrics), OTLP push, console (stdout, for debugging).",
        _exporters,
        "--metrics-exporter",
    ),
    Option(
        "OTEL_EXPORTER_PROMETHEUS_HOST",
        "prometheus_host",
        "0.0.0.0",  # noqa: S104 - a node agent is scraped from outside
        "a host name or address",
        "Address the HTTP server (/metrics, /healthz, /readyz) listens on.",
        _host,
        "--prometheus-host",
    ),
    Option(
        "OTEL_EXPORTER_PROMETHEUS_PORT",
        "prometheus_port",
        "9464",
        "an integer 0-65535 (0: any free port)",
        "Port of the HTTP server.",
        _int_between(0, 65535),
        "--prometheus-port",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        None,
        None,
        "a URL such as http://collector:4317",
        "OTLP endpoint for all signals (SDK default: http://localhost:4317 for grpc, "
        "http://localhost:4318 for http/protobuf, which appends /v1/metrics).",
        _endpoint,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        None,
        None,
        "a URL",
        "OTLP endpoint for metrics only; wins over OTEL_EXPORTER_OTLP_ENDPOINT, used as is.",
        _endpoint,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        None,
        "grpc",
        "grpc or http/protobuf",
        "OTLP transport for all signals.",
        _choice(PROTOCOLS),
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "otlp_protocol",
        None,
        "grpc or http/protobuf",
        "OTLP transport for metrics; wins over OTEL_EXPORTER_OTLP_PROTOCOL.",
        _choice(PROTOCOLS),
        "--otlp-protocol",
        default_doc="OTEL_EXPORTER_OTLP_PROTOCOL",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_HEADERS",
        None,
        None,
        "comma list of key=value (URL-encoded)",
        "Headers sent with every OTLP export (values are never logged).",
        _key_values,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        None,
        None,
        "comma list of key=value",
        "Headers for metrics exports only.",
        _key_values,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        None,
        None,
        "path of a readable PEM file",
        "CA bundle to verify the Collector's TLS certificate.",
        _path,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
        None,
        None,
        "path of a readable PEM file",
        "CA bundle for metrics exports only.",
        _path,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_INSECURE",
        None,
        None,
        "true or false",
        "gRPC only: plaintext to a scheme-less endpoint (an http:// endpoint is plaintext anyway).",
        _bool,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_INSECURE",
        None,
        None,
        "true or false",
        "gRPC only, metrics only: like OTEL_EXPORTER_OTLP_INSECURE.",
        _bool,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        None,
        "10",
        "a positive number of seconds",
        "Timeout of one OTLP export. The Python SDK reads this in seconds, not milliseconds.",
        _positive_number,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        None,
        None,
        "gzip, deflate or none",
        "Compression of OTLP exports.",
        _choice(("gzip", "deflate", "none")),
    ),
    Option(
        "OTEL_METRIC_EXPORT_INTERVAL",
        "export_interval_ms",
        "60000",
        "an integer 100-86400000 (ms)",
        "Milliseconds between two OTLP (and console) exports.",
        _int_between(100, 86_400_000),
        "--export-interval",
    ),
    Option(
        "OTEL_METRIC_EXPORT_TIMEOUT",
        "export_timeout_ms",
        "30000",
        "an integer 100-86400000 (ms)",
        "Milliseconds one periodic collection plus export may take.",
        _int_between(100, 86_400_000),
    ),
    Option(
        "OTEL_SERVICE_NAME",
        "service_name",
        "otel-vmi-hv",
        "a non-empty printable string",
        "service.name of the resource.",
        _text,
    ),
    Option(
        "OTEL_RESOURCE_ATTRIBUTES",
        "resource_attributes",
        "",
        "comma list of key=value",
        "Extra resource attributes; the agent adds k8s.node.name and host.name.",
        _key_values,
    ),
    Option(
        "OTEL_SDK_DISABLED",
        "sdk_disabled",
        "false",
        "true or false",
        "Disable the OpenTelemetry SDK: no metric is exported, /metrics is empty.",
        _bool,
    ),
    Option(
        "OTEL_VMI_HV_NODE_NAME",
        "node_name",
        None,
        "a node name (1-253 printable characters)",
        "The node this agent reports for: the `node` label and the VMI watch's scope.",
        _node_name,
        "--node-name",
        default_doc="$NODE_NAME, else the host name",
    ),
    Option(
        "OTEL_VMI_HV_SOURCE",
        "source",
        "auto",
        "auto, kubernetes or libvirt",
        "Where VMIs come from: the Kubernetes API (KubeVirt) or the libvirt daemon's active domains. "
        "auto picks kubernetes in a pod or when KUBECONFIG is set.",
        _choice(SOURCES),
        "--source",
    ),
    Option(
        "OTEL_VMI_HV_LIBVIRT_URI",
        "libvirt_uri",
        None,
        "a libvirt URI; with the kubernetes source a template using "
        + ", ".join("{" + p + "}" for p in URI_PLACEHOLDERS),
        "libvirt connection (always opened read-only).",
        _libvirt_uri,
        "--libvirt-uri",
        default_doc=f"{STANDALONE_LIBVIRT_URI} (libvirt source); {KUBEVIRT_LIBVIRT_URI} (kubernetes)",
    ),
    Option(
        "OTEL_VMI_HV_LIBVIRT_TIMEOUT",
        "libvirt_timeout",
        "5s",
        "a duration 10ms-5m, e.g. 5s or 500ms",
        "Longest one libvirt call may take before its VMI is reported unknown and retried later.",
        _duration_between(0.01, 300),
        "--libvirt-timeout",
    ),
    Option(
        "OTEL_VMI_HV_LOG_LEVEL",
        "log_level",
        "info",
        "debug, info, warning or error",
        "Log verbosity (logs go to stderr).",
        _choice(LOG_LEVELS),
        "--log-level",
    ),
    Option(
        "OTEL_VMI_HV_PODS_ROOT",
        "pods_root",
        "/pods",
        "an absolute directory path",
        "Where the host's /var/lib/kubelet/pods is mounted (kubernetes source).",
        _absolute_path,
        "--pods-root",
    ),
    Option(
        "OTEL_VMI_HV_PROC_ROOT",
        "proc_root",
        None,
        "an existing absolute directory: the host's /proc (e.g. /host/proc from a read-only hostPath)",
        "Detect from the running QEMU's vCPU thread names in this /proc before asking libvirt "
        "(no socket, no privilege needed); see docs/proc-detection.md.",
        _existing_directory,
        "--proc-root",
        default_doc="unset: off",
    ),
    Option(
        "OTEL_VMI_HV_RESYNC_INTERVAL",
        "resync_interval",
        "30s",
        "a duration 1s-1h",
        "libvirt source: how often the domain list is re-read in addition to lifecycle events.",
        _duration_between(1, 3600),
        "--resync-interval",
    ),
    Option(
        "OTEL_VMI_HV_TLS_CERT_FILE",
        "tls_cert_file",
        None,
        "path of a readable PEM certificate (chain)",
        "Serve /metrics, /healthz and /readyz over HTTPS with this certificate (needs the key file too).",
        _absolute_path,
        "--tls-cert-file",
        default_doc="unset: plain HTTP",
    ),
    Option(
        "OTEL_VMI_HV_TLS_KEY_FILE",
        "tls_key_file",
        None,
        "path of a readable PEM private key",
        "Private key of the HTTPS certificate.",
        _absolute_path,
        "--tls-key-file",
    ),
    Option(
        "OTEL_VMI_HV_TLS_CLIENT_CA_FILE",
        "tls_client_ca_file",
        None,
        "path of a readable PEM CA bundle",
        "Require client certificates signed by this CA (mutual TLS); needs the certificate and key.",
        _absolute_path,
        "--tls-client-ca-file",
        default_doc="unset: no client certificate asked",
    ),
    Option(
        "OTEL_VMI_HV_KVM_DEVICE",
        "kvm_device",
        "/dev/kvm",
        "an absolute path",
        "libvirt source: the KVM device opened (and asked KVM_GET_API_VERSION) to tell why a domain is"
        " emulated; in a cluster the Node's allocatable devices.kubevirt.io/kvm is used instead.",
        _absolute_path,
        "--kvm-device",
    ),
    Option(
        "OTEL_VMI_HV_RELIST_SPREAD",
        "relist_spread",
        "10s",
        "a duration 0s-10m",
        "kubernetes source: longest random wait before a relist that follows an outage, so the agents"
        " of all nodes do not relist in the same second.",
        _duration_between(0, 600),
        "--relist-spread",
    ),
    Option(
        "OTEL_VMI_HV_WATCH_SILENCE_TIMEOUT",
        "watch_silence_timeout",
        "3m",
        "a duration 100ms-1h",
        "kubernetes source: a watch that brings neither an event nor a bookmark for this long is ended"
        " and resumed (the API server sends bookmarks about every minute).",
        _duration_between(0.1, 3600),
        "--watch-silence-timeout",
    ),
)

OPTION_BY_ENV = {option.env: option for option in OPTIONS}
_KUBE_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?")
# Never echoed back, not even in an error message: they carry tokens.
SECRET_OPTIONS = frozenset({"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"})


def _check_tls(values: Mapping[str, Any]) -> None:
    """Load the TLS material now, so a wrong path or a key that does not match fails at start."""
    cert, key, client_ca = (
        values.get("tls_cert_file"),
        values.get("tls_key_file"),
        values.get("tls_client_ca_file"),
    )
    if not (cert or key or client_ca):
        return
    if not cert or not key:
        missing = "OTEL_VMI_HV_TLS_KEY_FILE" if cert else "OTEL_VMI_HV_TLS_CERT_FILE"
        given = (
            "OTEL_VMI_HV_TLS_CERT_FILE"
            if cert
            else ("OTEL_VMI_HV_TLS_KEY_FILE" if key else "OTEL_VMI_HV_TLS_CLIENT_CA_FILE")
        )
        raise ConfigError(f"{given} is set but {missing} is not: HTTPS needs both a certificate and its key")
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"OTEL_VMI_HV_TLS_CERT_FILE={cert!r} / OTEL_VMI_HV_TLS_KEY_FILE={key!r} cannot be used: {error}"
        ) from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"OTEL_VMI_HV_TLS_CLIENT_CA_FILE={client_ca!r} cannot be used: {error}"
            ) from None


def _in_cluster(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(IN_CLUSTER_TOKEN)


def load_settings(environ: Mapping[str, str], flags: Mapping[str, str | None] | None = None) -> Settings:
    """Build Settings from the environment and CLI flags (flags win); raise ConfigError on bad input.

    Empty environment values count as unset, as the OpenTelemetry specification asks.
    """
    flags = flags or {}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for option in OPTIONS:
        raw: str | None
        origin = "default"
        flag_value = flags.get(option.env) if option.flag else None
        if flag_value is not None:
            raw, origin = flag_value, "flag"
        elif environ.get(option.env, "").strip():
            raw, origin = environ[option.env], "env"
        else:
            raw = option.default
        if raw is None:
            continue
        try:
            parsed = option.parse(raw)
        except ConfigError as error:
            if option.env in str(error):
                raise
            raise ConfigError(f"{option.env}: {error}") from None
        except ValueError:
            source = "flag " + (option.flag or "") if origin == "flag" else option.env
            shown = " (value not shown)" if option.env in SECRET_OPTIONS else f"={raw!r}"
            raise ConfigError(f"{source}{shown} is invalid: expected {option.allowed}") from None
        if option.field is not None:
            values[option.field] = parsed
            origins[option.field] = origin
        values.setdefault("_by_env", {})[option.env] = parsed

    by_env: dict[str, Any] = values.pop("_by_env", {})
    for cert_var in ("OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE"):
        path = by_env.get(cert_var)
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"{cert_var}={path!r} is invalid: expected {OPTION_BY_ENV[cert_var].allowed}")

    values.setdefault("otlp_protocol", by_env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
    values["otlp_endpoint"] = by_env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or by_env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if "node_name" not in values:
        values["node_name"] = _node_name(_default_node_name(environ))
        origins["node_name"] = "default"

    kubeconfig = environ.get("KUBECONFIG", "").strip() or None
    requested = values["source"]
    if requested == "auto":
        values["source"] = "kubernetes" if (_in_cluster(environ) or kubeconfig) else "libvirt"
    elif requested == "kubernetes" and not (_in_cluster(environ) or kubeconfig):
        default_kubeconfig = os.path.expanduser("~/.kube/config")
        if not os.path.exists(default_kubeconfig):
            raise ConfigError(
                "OTEL_VMI_HV_SOURCE='kubernetes' cannot be used: not running in a pod "
                "(no KUBERNETES_SERVICE_HOST and service-account token) and no KUBECONFIG or ~/.kube/config"
            )
        kubeconfig = default_kubeconfig
    values["kubeconfig"] = kubeconfig
    if values["source"] == "kubernetes" and not _KUBE_NODE_NAME.fullmatch(values["node_name"]):
        # It becomes the value of the label selector kubevirt.io/nodeName=<node>: a comma or "="
        # would silently change the selector, an invalid value would be refused on every request.
        raise ConfigError(
            f"OTEL_VMI_HV_NODE_NAME={values['node_name']!r} is not a Kubernetes node name usable in a label "
            "selector: lowercase letters, digits, '-' and '.', at most 63 characters"
            + (
                " (it came from the host name; set OTEL_VMI_HV_NODE_NAME or NODE_NAME)"
                if origins.get("node_name") == "default"
                else ""
            )
        )

    uri = values.get("libvirt_uri")
    if uri is None:
        values["libvirt_uri"] = (
            KUBEVIRT_LIBVIRT_URI if values["source"] == "kubernetes" else STANDALONE_LIBVIRT_URI
        )
        origins["libvirt_uri"] = "default"
    elif values["source"] == "libvirt" and "{" in uri.replace("{{", ""):
        raise ConfigError(
            f"OTEL_VMI_HV_LIBVIRT_URI={uri!r} has placeholders, which only the kubernetes source fills "
            f"(the source is libvirt{' (auto: no cluster found)' if requested == 'auto' else ''})"
        )
    if values["export_timeout_ms"] > values["export_interval_ms"]:
        if origins.get("export_timeout_ms") == "default":
            # A short interval (common in tests and demos) should not demand a timeout too.
            values["export_timeout_ms"] = values["export_interval_ms"]
        else:
            raise ConfigError(
                f"OTEL_METRIC_EXPORT_TIMEOUT={values['export_timeout_ms']} is larger than "
                f"OTEL_METRIC_EXPORT_INTERVAL={values['export_interval_ms']}: "
                "the timeout must not exceed the interval"
            )
    _check_tls(values)
    values["origins"] = tuple(sorted(origins.items()))
    return Settings(**values)
