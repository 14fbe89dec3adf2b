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
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

EXPORTERS = ("prometheus", "otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")
SOURCES = ("auto", "kubernetes", "libvirt")
LOG_LEVELS = ("debug", "info", "warning", "error")
URI_PLACEHOLDERS = ("pod_uid", "vmi_uid", "namespace", "name", "mode", "pods_root")
COMPRESSIONS = ("gzip", "deflate", "none")
SIGNAL_SETTINGS = (
    *("CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY", "COMPRESSION", "ENDPOINT", "HEADERS"),
    *("INSECURE", "PROTOCOL", "TIMEOUT"),
)
GRPC_COMPRESSIONS = ("gzip",)  # the gRPC exporter refuses "none" and "deflate" with an exception
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)

STANDALONE_LIBVIRT_URI = "qemu:///system"
# KubeVirt runs one virtqemud per launcher pod; its socket sits in an emptyDir of that pod
# (libvirt-runtime). The DaemonSet mounts /var/lib/kubelet/pods at /pods so the path stays
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
    web_max_connections: int = 512
    web_max_requests: int = 40
    web_read_header_timeout: float = 10.0
    web_idle_timeout: float = 30.0
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


def _headers(raw: str) -> tuple[tuple[str, str], ...]:
    """OTLP headers: as ``_key_values``, and each name a token and no value with a control
    character (a newline would split the header on the wire, and gRPC logs every export)."""
    pairs = _key_values(raw)
    for key, value in pairs:
        if not _HEADER_NAME.fullmatch(key) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError
    return pairs


def _readable_file(raw: str) -> str:
    """A path the SDK will read at start: a regular file this process may open (not a directory)."""
    value = _path(raw)
    if not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise ValueError
    return value


def _choice_exact(allowed: tuple[str, ...]) -> Callable[[str], str]:
    """For values the SDK compares without folding case or trimming."""

    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError
        return raw

    return parse


def _entry_point_names(group: str) -> Callable[[str], tuple[str, ...]]:
    """Comma list of plug-in names the SDK loads from the entry-point ``group``; an unknown one
    would fail (or be skipped) only when the exporter or resource is built."""

    def parse(raw: str) -> tuple[str, ...]:
        from importlib.metadata import entry_points

        names = tuple(name.strip() for name in raw.split(",") if name.strip())
        known = {entry.name for entry in entry_points(group=group)}
        missing = [name for name in names if name not in known]
        if missing:
            raise ConfigError(
                f"{raw!r} names no installed plug-in {missing[0]!r} (entry points {group}: "
                + (", ".join(sorted(known)) or "none")
                + ")"
            )
        return names

    return parse


def _grpc_status_codes(raw: str) -> tuple[str, ...]:
    names = tuple(code.strip().upper() for code in raw.split(",") if code.strip())
    known = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND"}
    known |= {"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION"}
    known |= {"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
    known |= {"UNAUTHENTICATED"}
    if not names or any(name not in known for name in names):
        raise ValueError
    return names


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
        "comma list of key=value (URL-encoded; names are HTTP tokens, no control characters)",
        "Headers sent with every OTLP export (values are never logged).",
        _headers,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        None,
        None,
        "comma list of key=value",
        "Headers for metrics exports only.",
        _headers,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        None,
        None,
        "path of a readable PEM file",
        "CA bundle to verify the Collector's TLS certificate.",
        _readable_file,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
        None,
        None,
        "path of a readable PEM file",
        "CA bundle for metrics exports only.",
        _readable_file,
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
        "gzip, deflate or none (grpc: gzip only)",
        "Compression of OTLP exports.",
        _choice(COMPRESSIONS),
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
        None,
        None,
        "gzip, deflate or none (grpc: gzip only)",
        "Compression of OTLP metrics exports; wins over OTEL_EXPORTER_OTLP_COMPRESSION.",
        _choice(COMPRESSIONS),
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        None,
        None,
        "a positive number of seconds",
        "Timeout of one OTLP metrics export; wins over OTEL_EXPORTER_OTLP_TIMEOUT.",
        _positive_number,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        None,
        None,
        "path of a readable PEM file",
        "Private key of the client certificate presented to the Collector (mutual TLS).",
        _readable_file,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
        None,
        None,
        "path of a readable PEM file",
        "Client key for metrics exports only.",
        _readable_file,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        None,
        None,
        "path of a readable PEM file",
        "Client certificate presented to the Collector (mutual TLS).",
        _readable_file,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
        None,
        None,
        "path of a readable PEM file",
        "Client certificate for metrics exports only.",
        _readable_file,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        None,
        None,
        "cumulative, delta or lowmemory",
        "Temporality of OTLP-exported sums and histograms (/metrics is always cumulative).",
        _choice(("cumulative", "delta", "lowmemory")),
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
        None,
        None,
        "explicit_bucket_histogram or base2_exponential_bucket_histogram",
        "Histogram aggregation of OTLP exports.",
        _choice(("explicit_bucket_histogram", "base2_exponential_bucket_histogram")),
    ),
    Option(
        "OTEL_METRICS_EXEMPLAR_FILTER",
        None,
        None,
        "trace_based, always_on or always_off",
        "Which measurements may carry exemplars (the agent records none with a trace).",
        _choice_exact(("trace_based", "always_on", "always_off")),
    ),
    Option(
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS",
        None,
        None,
        "comma list of installed resource detector names",
        "Extra OpenTelemetry resource detectors to run at start.",
        _entry_point_names("opentelemetry_resource_detector"),
    ),
    Option(
        "OTEL_PYTHON_CONTEXT",
        None,
        None,
        "an installed context implementation (contextvars_context)",
        "OpenTelemetry's runtime context implementation.",
        _entry_point_names("opentelemetry_context"),
    ),
    Option(
        "OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER",
        None,
        None,
        "an installed credential provider name",
        "gRPC: plug-in that supplies the channel credentials.",
        _entry_point_names("opentelemetry_otlp_credential_provider"),
    ),
    Option(
        "OTEL_PYTHON_EXPORTER_OTLP_GRPC_METRICS_CREDENTIAL_PROVIDER",
        None,
        None,
        "an installed credential provider name",
        "gRPC, metrics only: like OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER.",
        _entry_point_names("opentelemetry_otlp_credential_provider"),
    ),
    Option(
        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
        None,
        None,
        "an installed credential provider name",
        "http/protobuf: plug-in that supplies the HTTP session.",
        _entry_point_names("opentelemetry_otlp_credential_provider"),
    ),
    Option(
        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER",
        None,
        None,
        "an installed credential provider name",
        "http/protobuf, metrics only: like OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER.",
        _entry_point_names("opentelemetry_otlp_credential_provider"),
    ),
    Option(
        "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES",
        None,
        None,
        "comma list of gRPC status names, e.g. UNAVAILABLE,RESOURCE_EXHAUSTED",
        "gRPC status codes after which an export is retried (SDK default: the transient ones).",
        _grpc_status_codes,
    ),
    Option(
        "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED",
        None,
        None,
        "true or false",
        "Let the OTLP exporters count their own exports (OpenTelemetry SDK self-metrics).",
        _bool,
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
    Option(
        "OTEL_VMI_HV_WEB_MAX_CONNECTIONS",
        "web_max_connections",
        "512",
        "an integer 1-100000",
        "Open connections the HTTP server holds at most; more are answered 503 and closed "
        "(each idle one costs about 5 KiB).",
        _int_between(1, 100_000),
        "--web-max-connections",
    ),
    Option(
        "OTEL_VMI_HV_WEB_MAX_REQUESTS",
        "web_max_requests",
        "40",
        "an integer 1-10000",
        "Concurrent /metrics requests served at most; more are answered 503 (node_exporter's "
        "--web.max-requests).",
        _int_between(1, 10_000),
        "--web-max-requests",
    ),
    Option(
        "OTEL_VMI_HV_WEB_READ_HEADER_TIMEOUT",
        "web_read_header_timeout",
        "10s",
        "a duration 100ms-5m",
        "Time a client has to send a request's headers (and finish the TLS handshake); then it is "
        "disconnected (Go's ReadHeaderTimeout).",
        _duration_between(0.1, 300),
        "--web-read-header-timeout",
    ),
    Option(
        "OTEL_VMI_HV_WEB_IDLE_TIMEOUT",
        "web_idle_timeout",
        "30s",
        "a duration 1s-1h",
        "How long an idle keep-alive connection, or a client not reading its response, is kept.",
        _duration_between(1, 3600),
        "--web-idle-timeout",
    ),
)

OPTION_BY_ENV = {option.env: option for option in OPTIONS}
# Variables of the installed OpenTelemetry packages that nothing on the agent's path reads (traces,
# logs, auto-instrumentation, other exporters); tests/unit/test_config.py compares this list with
# the SDK's, so a new SDK variable is either validated or listed here on purpose.
NOT_READ_BY_THE_AGENT = frozenset(
    {
        "OTEL_ATTRIBUTE_COUNT_LIMIT",  # span and log record attributes
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "OTEL_BLRP_EXPORT_TIMEOUT",
        "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE",
        "OTEL_BLRP_MAX_QUEUE_SIZE",
        "OTEL_BLRP_SCHEDULE_DELAY",
        "OTEL_BSP_EXPORT_TIMEOUT",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_CONFIG_FILE",  # read by opentelemetry-instrument's configurator only
        "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT",
        "OTEL_EXPORTER_ZIPKIN_TIMEOUT",
        "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
        "OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT",
        "OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "OTEL_LOG_LEVEL",  # defined by the SDK, read by none of its modules
        "OTEL_LOGS_EXPORTER",
        "OTEL_PROPAGATORS",  # trace context propagation
        "OTEL_PYTHON_ID_GENERATOR",
        "OTEL_PYTHON_LOGGER_CONFIGURATOR",
        "OTEL_PYTHON_LOGGER_PROVIDER",
        "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED",
        "OTEL_PYTHON_METER_CONFIGURATOR",
        "OTEL_PYTHON_METER_PROVIDER",  # the agent builds its MeterProvider, never the global one
        "OTEL_PYTHON_TRACER_CONFIGURATOR",
        "OTEL_PYTHON_TRACER_PROVIDER",
        "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
        "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "OTEL_SPAN_EVENT_COUNT_LIMIT",
        "OTEL_SPAN_LINK_COUNT_LIMIT",
        "OTEL_TRACES_EXPORTER",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    }
    | {f"OTEL_EXPORTER_OTLP_{signal}_{name}" for signal in ("TRACES", "LOGS") for name in SIGNAL_SETTINGS}
    | {
        f"OTEL_PYTHON_EXPORTER_OTLP_{transport}_{signal}_CREDENTIAL_PROVIDER"
        for transport in ("GRPC", "HTTP")
        for signal in ("TRACES", "LOGS")
    }
)
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

    from otel_vmi_hv.server.tls_reload import server_context  # the server's own builder: same checks

    try:
        server_context(cert, key, None)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"OTEL_VMI_HV_TLS_CERT_FILE={cert!r} / OTEL_VMI_HV_TLS_KEY_FILE={key!r} cannot be used: {error}"
        ) from None
    if client_ca:
        try:
            server_context(cert, key, client_ca)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"OTEL_VMI_HV_TLS_CLIENT_CA_FILE={client_ca!r} cannot be used: {error}"
            ) from None


def unset_empty_variables(environ: MutableMapping[str, str]) -> list[str]:
    """Remove every empty (or blank) OTEL_* variable, and return their names.

    The OpenTelemetry specification says an empty value means unset, but the Python SDK parses
    some anyway (``float("")`` for OTEL_EXPORTER_OTLP_TIMEOUT=): removing them before the SDK
    reads the environment makes "empty means unset" hold everywhere, not only in this module.
    """
    empty = [name for name, value in environ.items() if name.startswith("OTEL_") and not value.strip()]
    for name in empty:
        del environ[name]
    return empty


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
    values.setdefault("otlp_protocol", by_env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
    if "otlp" in values["metrics_exporters"] and values["otlp_protocol"] == "grpc":
        for compression_var in ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"):
            compression = by_env.get(compression_var)
            if compression is not None and compression not in GRPC_COMPRESSIONS:
                raise ConfigError(
                    f"{compression_var}={compression!r} cannot be used with the grpc protocol: "
                    "gzip, or unset for none (deflate and none exist only for http/protobuf)"
                )
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
