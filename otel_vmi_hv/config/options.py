"""The table of every environment variable and flag the agent honours: the single source of truth.

Each default is written here once. ``load_settings`` fills ``Settings`` from it, the server's limits
take their defaults from it (``default_value``), the CLI builds its flags from it, and
docs/configuration.md is generated from it (``otel-vmi-hv config-doc``, ``make docs``); tests keep
the documented defaults equal to the effective ones. Checks that need more than one value live in
``loading.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import otel_vmi_hv.config.parsers as parse
from otel_vmi_hv.config.parsers import URI_PLACEHOLDERS

STANDALONE_LIBVIRT_URI = "qemu:///system"
# Beyond the connection cap, this many more connections may send one request within this many seconds
# (kubelet's default probe timeout): a probe is answered, anything else refused. Not options.
PROBE_SLOTS = 8
PROBE_HEAD_TIMEOUT = 1.0
# KubeVirt runs one virtqemud per launcher pod; its socket sits in an emptyDir of that pod
# (libvirt-runtime). The DaemonSet mounts /var/lib/kubelet/pods at /pods so the path stays
# under the 108-byte sun_path limit.
KUBEVIRT_LIBVIRT_URI = (
    "qemu+unix:///{mode}?socket={pods_root}/{pod_uid}/volumes/kubernetes.io~empty-dir"
    "/libvirt-runtime/virtqemud-sock"
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    env: str
    allowed: str  # what the value may be, in an operator's words (error messages, the docs)
    help: str
    parse: Callable[[str], Any]  # raises ValueError (or ConfigError) on a bad value
    field: str | None = None  # the Settings field it fills; None: only validated (the SDK reads it)
    default: str | None = None  # parsed like a value; None: unset (the SDK's own default, if any)
    flag: str | None = None
    default_doc: str | None = None  # what the docs show when the default is computed at start

    @property
    def documented_default(self) -> str:
        """A value in backticks, or what the default depends on."""
        if self.default_doc and self.default_doc.startswith("OTEL_"):
            return f"`{self.default_doc}`"  # a metrics twin: the variable for every signal
        if self.default is not None:
            return f"`{self.default}`" if self.default else "empty"
        return self.default_doc or ("unset" if self.field else "SDK default")


def agent_option(name: str, **row: Any) -> Option:
    """``OTEL_VMI_HV_<NAME>``: fills ``Settings.<name>`` and takes the flag ``--<name>``."""
    return Option(
        env=f"OTEL_VMI_HV_{name}", field=name.lower(), flag="--" + name.lower().replace("_", "-"), **row
    )


def per_signal(pattern: str, metrics: dict[str, Any] | None = None, **row: Any) -> tuple[Option, Option]:
    """A variable for every signal (``{}`` in ``pattern`` where the signal goes) and its twin for
    metrics only, which wins over it (the TRACES and LOGS twins are read by nothing of the agent)."""
    general = Option(env=pattern.format(""), **row)
    twin = dataclasses.replace(
        general,
        env=pattern.format("METRICS_"),
        help=f"Like {general.env}, for metrics exports only; wins over it.",
        default=None,
        default_doc=general.env,
        **(metrics or {}),
    )
    return general, twin


PEM_FILE: dict[str, Any] = {"allowed": "path of a readable PEM file", "parse": parse.readable_file}
CREDENTIAL_PROVIDER: dict[str, Any] = {
    "allowed": "an installed credential provider name",
    "parse": parse.entry_point_names("opentelemetry_otlp_credential_provider"),
}
_PER_SIGNAL = (
    per_signal(
        "OTEL_EXPORTER_OTLP_{}ENDPOINT",
        field="otlp_endpoint",
        default_doc="SDK default",
        allowed="a URL such as http://collector:4317",
        help="OTLP endpoint (SDK default: http://localhost:4317 for grpc, http://localhost:4318 for "
        "http/protobuf, which appends /v1/metrics to the general one; the metrics one is used as is).",
        parse=parse.endpoint,
    ),
    per_signal(
        "OTEL_EXPORTER_OTLP_{}PROTOCOL",
        metrics={"flag": "--otlp-protocol"},
        field="otlp_protocol",
        default="grpc",
        **parse.one_of("grpc", "http/protobuf"),
        help="OTLP transport.",
    ),
    per_signal(
        "OTEL_EXPORTER_OTLP_{}HEADERS",
        allowed="comma list of key=value (URL-encoded; names are HTTP tokens, no control characters)",
        help="Headers sent with every OTLP export (values are never logged).",
        parse=parse.headers,
    ),
    per_signal(
        "OTEL_EXPORTER_OTLP_{}CERTIFICATE",
        **PEM_FILE,
        help="CA bundle to verify the Collector's TLS certificate.",
    ),
    per_signal(
        "OTEL_EXPORTER_OTLP_{}CLIENT_KEY",
        **PEM_FILE,
        help="Private key of the client certificate presented to the Collector (mutual TLS).",
    ),
    per_signal(
        "OTEL_EXPORTER_OTLP_{}CLIENT_CERTIFICATE",
        **PEM_FILE,
        help="Client certificate presented to the Collector (mutual TLS).",
    ),
    per_signal(
        "OTEL_EXPORTER_OTLP_{}INSECURE",
        **parse.BOOLEAN,
        help="gRPC only: plaintext to a scheme-less endpoint (an http:// endpoint is plaintext anyway).",
    ),
    per_signal(
        "OTEL_EXPORTER_OTLP_{}TIMEOUT",
        allowed="a positive number of seconds",
        help="Timeout of one OTLP export (SDK default: 10). The Python SDK reads seconds, not milliseconds.",
        parse=parse.positive_number,
    ),
    per_signal(
        "OTEL_EXPORTER_OTLP_{}COMPRESSION",
        **parse.one_of("gzip", "deflate", "none", note=" (grpc: gzip only)"),
        help="Compression of OTLP exports.",
    ),
    per_signal(
        "OTEL_PYTHON_EXPORTER_OTLP_GRPC_{}CREDENTIAL_PROVIDER",
        **CREDENTIAL_PROVIDER,
        help="gRPC: plug-in that supplies the channel credentials.",
    ),
    per_signal(
        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_{}CREDENTIAL_PROVIDER",
        **CREDENTIAL_PROVIDER,
        help="http/protobuf: plug-in that supplies the HTTP session.",
    ),
)

# A new row: ``agent_option("NAME", default=..., allowed=..., help=..., parse=...)`` for the agent's
# own OTEL_VMI_HV_NAME, plus a field ``name`` in settings.py (type only: the default is the row's).
OPTIONS: tuple[Option, ...] = (
    Option(
        env="OTEL_METRICS_EXPORTER",
        field="metrics_exporters",
        flag="--metrics-exporter",
        default="prometheus,otlp",
        allowed="comma list of prometheus, otlp, console, or none alone",
        help="Which exporters run: Prometheus pull (/metrics), OTLP push, console (stdout, for debugging).",
        parse=parse.exporters,
    ),
    Option(
        env="OTEL_EXPORTER_PROMETHEUS_HOST",
        field="prometheus_host",
        flag="--prometheus-host",
        default="0.0.0.0",  # noqa: S104 - a node agent is scraped from outside
        allowed="a host name or address",
        help="Address the HTTP server (/metrics, /healthz, /readyz) listens on.",
        parse=parse.host,
    ),
    Option(
        env="OTEL_EXPORTER_PROMETHEUS_PORT",
        field="prometheus_port",
        flag="--prometheus-port",
        default="9464",
        **parse.integer(0, 65535, " (0: any free port)"),
        help="Port of the HTTP server.",
    ),
    *(option for pair in _PER_SIGNAL for option in pair),
    Option(
        env="OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        **parse.one_of("cumulative", "delta", "lowmemory"),
        help="Temporality of OTLP-exported sums and histograms (/metrics is always cumulative).",
    ),
    Option(
        env="OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
        **parse.one_of("explicit_bucket_histogram", "base2_exponential_bucket_histogram"),
        help="Histogram aggregation of OTLP exports.",
    ),
    Option(
        env="OTEL_METRICS_EXEMPLAR_FILTER",
        **parse.one_of("trace_based", "always_on", "always_off", fold=False),
        help="Which measurements may carry exemplars (the agent records none with a trace).",
    ),
    Option(
        env="OTEL_EXPERIMENTAL_RESOURCE_DETECTORS",
        allowed="comma list of installed resource detector names",
        help="Extra OpenTelemetry resource detectors to run at start.",
        parse=parse.entry_point_names("opentelemetry_resource_detector"),
    ),
    Option(
        env="OTEL_PYTHON_CONTEXT",
        allowed="an installed context implementation (contextvars_context)",
        help="OpenTelemetry's runtime context implementation.",
        parse=parse.entry_point_names("opentelemetry_context"),
    ),
    Option(
        env="OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES",
        allowed="comma list of gRPC status names, e.g. UNAVAILABLE,RESOURCE_EXHAUSTED",
        help="gRPC status codes after which an export is retried (SDK default: the transient ones).",
        parse=parse.grpc_status_codes,
    ),
    Option(
        env="OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED",
        field="sdk_internal_metrics",
        default="false",
        **parse.BOOLEAN,
        help="Let the OpenTelemetry SDK count its own work (collections, exports) as metrics; they change"
        " at every collection, so /metrics then collects at every scrape.",
    ),
    Option(
        env="OTEL_METRIC_EXPORT_INTERVAL",
        field="export_interval_ms",
        flag="--export-interval",
        default="60000",
        **parse.integer(100, 86_400_000, " (ms)"),
        help="Milliseconds between two OTLP (and console) exports.",
    ),
    Option(
        env="OTEL_METRIC_EXPORT_TIMEOUT",
        field="export_timeout_ms",
        default="30000",
        **parse.integer(100, 86_400_000, " (ms)"),
        help="Milliseconds one periodic collection plus export may take (at most the interval: "
        "unset, it follows a shorter interval).",
    ),
    Option(
        env="OTEL_SERVICE_NAME",
        field="service_name",
        default="otel-vmi-hv",
        allowed="a non-empty printable string",
        help="service.name of the resource; wins over service.name in OTEL_RESOURCE_ATTRIBUTES.",
        parse=parse.text,
    ),
    Option(
        env="OTEL_RESOURCE_ATTRIBUTES",
        field="resource_attributes",
        default="",
        allowed="comma list of key=value",
        help="Resource attributes; each wins over the value the agent detects.",
        parse=parse.key_values,
    ),
    Option(
        env="OTEL_SDK_DISABLED",
        field="sdk_disabled",
        default="false",
        **parse.BOOLEAN,
        help="Disable the OpenTelemetry SDK: no metric is exported, /metrics is empty.",
    ),
    agent_option(
        "NODE_NAME",
        default_doc="$NODE_NAME, else the host name",
        allowed="a node name (1-253 printable characters)",
        help="The node this agent reports for: the `node` label and the VMI watch's scope.",
        parse=parse.node_name,
    ),
    agent_option(
        "SOURCE",
        default="auto",
        **parse.one_of("auto", "kubernetes", "libvirt"),
        help="Where VMIs come from: the Kubernetes API (KubeVirt) or the libvirt daemon's active domains. "
        "auto picks kubernetes in a pod or when KUBECONFIG is set.",
    ),
    agent_option(
        "LIBVIRT_URI",
        default_doc=f"{STANDALONE_LIBVIRT_URI} (libvirt source); {KUBEVIRT_LIBVIRT_URI} (kubernetes)",
        allowed="a libvirt URI; with the kubernetes source a template using "
        + ", ".join("{" + p + "}" for p in URI_PLACEHOLDERS),
        help="libvirt connection (always opened read-only).",
        parse=parse.libvirt_uri,
    ),
    agent_option(
        "LIBVIRT_TIMEOUT",
        default="5s",
        **parse.duration("10ms", "5m", ", e.g. 5s or 500ms"),
        help="Longest one libvirt call may take before its VMI is reported unknown and retried later.",
    ),
    agent_option(
        "LOG_LEVEL",
        default="info",
        **parse.one_of("debug", "info", "warning", "error"),
        help="Log verbosity (logs go to stderr).",
    ),
    agent_option(
        "PODS_ROOT",
        default="/pods",
        allowed="an absolute directory path",
        help="Where the host's /var/lib/kubelet/pods is mounted (kubernetes source).",
        parse=parse.absolute_path,
    ),
    agent_option(
        "PROC_ROOT",
        default_doc="unset: off",
        allowed="an existing absolute directory: the host's /proc "
        "(e.g. /host/proc from a read-only hostPath)",
        help="Detect from the running QEMU's vCPU thread names in this /proc before asking libvirt "
        "(no socket, no privilege needed); see docs/proc-detection.md.",
        parse=parse.existing_directory,
    ),
    agent_option(
        "RESYNC_INTERVAL",
        default="30s",
        **parse.duration("1s", "1h"),
        help="libvirt source: how often the domain list is re-read in addition to lifecycle events.",
    ),
    agent_option(
        "TLS_CERT_FILE",
        default_doc="unset: plain HTTP",
        allowed="absolute path of a readable PEM certificate (chain)",
        help="Serve /metrics, /healthz and /readyz over HTTPS with this certificate "
        "(needs the key file too).",
        parse=parse.absolute_path,
    ),
    agent_option(
        "TLS_KEY_FILE",
        allowed="absolute path of a readable PEM private key",
        help="Private key of the HTTPS certificate.",
        parse=parse.absolute_path,
    ),
    agent_option(
        "TLS_CLIENT_CA_FILE",
        default_doc="unset: no client certificate asked",
        allowed="absolute path of a readable PEM CA bundle",
        help="Require client certificates signed by this CA (mutual TLS); needs the certificate and key.",
        parse=parse.absolute_path,
    ),
    agent_option(
        "KVM_DEVICE",
        default="/dev/kvm",
        allowed="an absolute path",
        help="libvirt source: the KVM device opened (and asked KVM_GET_API_VERSION) to tell why a domain is"
        " emulated; in a cluster the Node's allocatable devices.kubevirt.io/kvm is used instead.",
        parse=parse.absolute_path,
    ),
    agent_option(
        "EVENTS",
        default="true",
        **parse.BOOLEAN,
        help="KubeVirt mode: record a Warning Event on each VMI reported qemu-tcg (once per VMI and reason,"
        " rate-limited), seen in `kubectl describe vmi`; needs create and patch on events.",
    ),
    agent_option(
        "RELIST_SPREAD",
        default="10s",
        **parse.duration("0s", "10m"),
        help="kubernetes source: longest random wait before a relist that follows an outage, so the agents"
        " of all nodes do not relist in the same second.",
    ),
    agent_option(
        "WATCH_SILENCE_TIMEOUT",
        default="3m",
        **parse.duration("100ms", "1h"),
        help="kubernetes source: a watch that brings neither an event nor a bookmark for this long is ended"
        " and resumed (the API server sends bookmarks about every minute).",
    ),
    agent_option(
        "WEB_MAX_CONNECTIONS",
        default="512",
        **parse.integer(1, 100_000),
        help="Open connections the HTTP server holds at most (memory per idle one: BENCHMARKS.md); beyond "
        f"them, {PROBE_SLOTS} more may each send one request within {PROBE_HEAD_TIMEOUT:g} s: /healthz and"
        " /readyz are answered, anything else gets 503, and the connection is closed.",
    ),
    agent_option(
        "WEB_MAX_REQUESTS",
        default="40",
        **parse.integer(1, 10_000),
        help="Concurrent /metrics requests served at most; more are answered 503 (node_exporter's "
        "--web.max-requests).",
    ),
    agent_option(
        "WEB_READ_HEADER_TIMEOUT",
        default="10s",
        **parse.duration("100ms", "5m"),
        help="Time a client has to send a request's headers (and finish the TLS handshake); then it is "
        "disconnected (Go's ReadHeaderTimeout).",
    ),
    agent_option(
        "WEB_IDLE_TIMEOUT",
        default="30s",
        **parse.duration("1s", "1h"),
        help="How long an idle keep-alive connection, or a client not reading its response, is kept.",
    ),
)

OPTION_BY_ENV = {option.env: option for option in OPTIONS}


def default_value(field: str) -> Any:
    """What ``field`` is when its variable is unset (for parts built without ``Settings``)."""
    return next(o.parse(o.default) for o in OPTIONS if o.field == field and o.default is not None)


# Never echoed back, not even in an error message: they carry tokens.
SECRET_OPTIONS = frozenset({"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"})
