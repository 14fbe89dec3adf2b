"""The table of every environment variable and flag the agent honours: the single source of truth.

The CLI builds its flags from ``OPTIONS``, the README's configuration reference is generated from it
(``otel-vmi-hv config-doc``, ``make docs``), and a test keeps the two in step. Each row names the
``Settings`` field it fills and the parser (``parsers.py``) that checks its value; checks that need
more than one value live in ``loading.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import otel_vmi_hv.config.parsers as parse
from otel_vmi_hv.config.parsers import URI_PLACEHOLDERS

PROTOCOLS = ("grpc", "http/protobuf")
SOURCES = ("auto", "kubernetes", "libvirt")
LOG_LEVELS = ("debug", "info", "warning", "error")
COMPRESSIONS = ("gzip", "deflate", "none")
SIGNAL_SETTINGS = (
    *("CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY", "COMPRESSION", "ENDPOINT", "HEADERS"),
    *("INSECURE", "PROTOCOL", "TIMEOUT"),
)

STANDALONE_LIBVIRT_URI = "qemu:///system"
# KubeVirt runs one virtqemud per launcher pod; its socket sits in an emptyDir of that pod
# (libvirt-runtime). The DaemonSet mounts /var/lib/kubelet/pods at /pods so the path stays
# under the 108-byte sun_path limit.
KUBEVIRT_LIBVIRT_URI = (
    "qemu+unix:///{mode}?socket={pods_root}/{pod_uid}/volumes/kubernetes.io~empty-dir"
    "/libvirt-runtime/virtqemud-sock"
)


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


OPTIONS: tuple[Option, ...] = (
    Option(
        "OTEL_METRICS_EXPORTER",
        "metrics_exporters",
        "prometheus,otlp",
        "comma list of prometheus, otlp, console, or none alone",
        "Which exporters run: Prometheus pull (/metrics), OTLP push, console (stdout, for debugging).",
        parse.exporters,
        "--metrics-exporter",
    ),
    Option(
        "OTEL_EXPORTER_PROMETHEUS_HOST",
        "prometheus_host",
        "0.0.0.0",  # noqa: S104 - a node agent is scraped from outside
        "a host name or address",
        "Address the HTTP server (/metrics, /healthz, /readyz) listens on.",
        parse.host,
        "--prometheus-host",
    ),
    Option(
        "OTEL_EXPORTER_PROMETHEUS_PORT",
        "prometheus_port",
        "9464",
        "an integer 0-65535 (0: any free port)",
        "Port of the HTTP server.",
        parse.int_between(0, 65535),
        "--prometheus-port",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        None,
        None,
        "a URL such as http://collector:4317",
        "OTLP endpoint for all signals (SDK default: http://localhost:4317 for grpc, "
        "http://localhost:4318 for http/protobuf, which appends /v1/metrics).",
        parse.endpoint,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        None,
        None,
        "a URL",
        "OTLP endpoint for metrics only; wins over OTEL_EXPORTER_OTLP_ENDPOINT, used as is.",
        parse.endpoint,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        None,
        "grpc",
        "grpc or http/protobuf",
        "OTLP transport for all signals.",
        parse.choice(PROTOCOLS),
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "otlp_protocol",
        None,
        "grpc or http/protobuf",
        "OTLP transport for metrics; wins over OTEL_EXPORTER_OTLP_PROTOCOL.",
        parse.choice(PROTOCOLS),
        "--otlp-protocol",
        default_doc="OTEL_EXPORTER_OTLP_PROTOCOL",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_HEADERS",
        None,
        None,
        "comma list of key=value (URL-encoded; names are HTTP tokens, no control characters)",
        "Headers sent with every OTLP export (values are never logged).",
        parse.headers,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        None,
        None,
        "comma list of key=value",
        "Headers for metrics exports only.",
        parse.headers,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        None,
        None,
        "path of a readable PEM file",
        "CA bundle to verify the Collector's TLS certificate.",
        parse.readable_file,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
        None,
        None,
        "path of a readable PEM file",
        "CA bundle for metrics exports only.",
        parse.readable_file,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_INSECURE",
        None,
        None,
        "true or false",
        "gRPC only: plaintext to a scheme-less endpoint (an http:// endpoint is plaintext anyway).",
        parse.boolean,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_INSECURE",
        None,
        None,
        "true or false",
        "gRPC only, metrics only: like OTEL_EXPORTER_OTLP_INSECURE.",
        parse.boolean,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        None,
        "10",
        "a positive number of seconds",
        "Timeout of one OTLP export. The Python SDK reads this in seconds, not milliseconds.",
        parse.positive_number,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        None,
        None,
        "gzip, deflate or none (grpc: gzip only)",
        "Compression of OTLP exports.",
        parse.choice(COMPRESSIONS),
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
        None,
        None,
        "gzip, deflate or none (grpc: gzip only)",
        "Compression of OTLP metrics exports; wins over OTEL_EXPORTER_OTLP_COMPRESSION.",
        parse.choice(COMPRESSIONS),
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        None,
        None,
        "a positive number of seconds",
        "Timeout of one OTLP metrics export; wins over OTEL_EXPORTER_OTLP_TIMEOUT.",
        parse.positive_number,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        None,
        None,
        "path of a readable PEM file",
        "Private key of the client certificate presented to the Collector (mutual TLS).",
        parse.readable_file,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
        None,
        None,
        "path of a readable PEM file",
        "Client key for metrics exports only.",
        parse.readable_file,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        None,
        None,
        "path of a readable PEM file",
        "Client certificate presented to the Collector (mutual TLS).",
        parse.readable_file,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
        None,
        None,
        "path of a readable PEM file",
        "Client certificate for metrics exports only.",
        parse.readable_file,
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        None,
        None,
        "cumulative, delta or lowmemory",
        "Temporality of OTLP-exported sums and histograms (/metrics is always cumulative).",
        parse.choice(("cumulative", "delta", "lowmemory")),
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
        None,
        None,
        "explicit_bucket_histogram or base2_exponential_bucket_histogram",
        "Histogram aggregation of OTLP exports.",
        parse.choice(("explicit_bucket_histogram", "base2_exponential_bucket_histogram")),
    ),
    Option(
        "OTEL_METRICS_EXEMPLAR_FILTER",
        None,
        None,
        "trace_based, always_on or always_off",
        "Which measurements may carry exemplars (the agent records none with a trace).",
        parse.choice_exact(("trace_based", "always_on", "always_off")),
    ),
    Option(
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS",
        None,
        None,
        "comma list of installed resource detector names",
        "Extra OpenTelemetry resource detectors to run at start.",
        parse.entry_point_names("opentelemetry_resource_detector"),
    ),
    Option(
        "OTEL_PYTHON_CONTEXT",
        None,
        None,
        "an installed context implementation (contextvars_context)",
        "OpenTelemetry's runtime context implementation.",
        parse.entry_point_names("opentelemetry_context"),
    ),
    Option(
        "OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER",
        None,
        None,
        "an installed credential provider name",
        "gRPC: plug-in that supplies the channel credentials.",
        parse.entry_point_names("opentelemetry_otlp_credential_provider"),
    ),
    Option(
        "OTEL_PYTHON_EXPORTER_OTLP_GRPC_METRICS_CREDENTIAL_PROVIDER",
        None,
        None,
        "an installed credential provider name",
        "gRPC, metrics only: like OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER.",
        parse.entry_point_names("opentelemetry_otlp_credential_provider"),
    ),
    Option(
        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
        None,
        None,
        "an installed credential provider name",
        "http/protobuf: plug-in that supplies the HTTP session.",
        parse.entry_point_names("opentelemetry_otlp_credential_provider"),
    ),
    Option(
        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER",
        None,
        None,
        "an installed credential provider name",
        "http/protobuf, metrics only: like OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER.",
        parse.entry_point_names("opentelemetry_otlp_credential_provider"),
    ),
    Option(
        "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES",
        None,
        None,
        "comma list of gRPC status names, e.g. UNAVAILABLE,RESOURCE_EXHAUSTED",
        "gRPC status codes after which an export is retried (SDK default: the transient ones).",
        parse.grpc_status_codes,
    ),
    Option(
        "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED",
        None,
        None,
        "true or false",
        "Let the OTLP exporters count their own exports (OpenTelemetry SDK self-metrics).",
        parse.boolean,
    ),
    Option(
        "OTEL_METRIC_EXPORT_INTERVAL",
        "export_interval_ms",
        "60000",
        "an integer 100-86400000 (ms)",
        "Milliseconds between two OTLP (and console) exports.",
        parse.int_between(100, 86_400_000),
        "--export-interval",
    ),
    Option(
        "OTEL_METRIC_EXPORT_TIMEOUT",
        "export_timeout_ms",
        "30000",
        "an integer 100-86400000 (ms)",
        "Milliseconds one periodic collection plus export may take.",
        parse.int_between(100, 86_400_000),
    ),
    Option(
        "OTEL_SERVICE_NAME",
        "service_name",
        "otel-vmi-hv",
        "a non-empty printable string",
        "service.name of the resource; wins over service.name in OTEL_RESOURCE_ATTRIBUTES.",
        parse.text,
    ),
    Option(
        "OTEL_RESOURCE_ATTRIBUTES",
        "resource_attributes",
        "",
        "comma list of key=value",
        "Resource attributes; each wins over the value the agent detects (see Resource attributes).",
        parse.key_values,
    ),
    Option(
        "OTEL_SDK_DISABLED",
        "sdk_disabled",
        "false",
        "true or false",
        "Disable the OpenTelemetry SDK: no metric is exported, /metrics is empty.",
        parse.boolean,
    ),
    Option(
        "OTEL_VMI_HV_NODE_NAME",
        "node_name",
        None,
        "a node name (1-253 printable characters)",
        "The node this agent reports for: the `node` label and the VMI watch's scope.",
        parse.node_name,
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
        parse.choice(SOURCES),
        "--source",
    ),
    Option(
        "OTEL_VMI_HV_LIBVIRT_URI",
        "libvirt_uri",
        None,
        "a libvirt URI; with the kubernetes source a template using "
        + ", ".join("{" + p + "}" for p in URI_PLACEHOLDERS),
        "libvirt connection (always opened read-only).",
        parse.libvirt_uri,
        "--libvirt-uri",
        default_doc=f"{STANDALONE_LIBVIRT_URI} (libvirt source); {KUBEVIRT_LIBVIRT_URI} (kubernetes)",
    ),
    Option(
        "OTEL_VMI_HV_LIBVIRT_TIMEOUT",
        "libvirt_timeout",
        "5s",
        "a duration 10ms-5m, e.g. 5s or 500ms",
        "Longest one libvirt call may take before its VMI is reported unknown and retried later.",
        parse.duration_between(0.01, 300),
        "--libvirt-timeout",
    ),
    Option(
        "OTEL_VMI_HV_LOG_LEVEL",
        "log_level",
        "info",
        "debug, info, warning or error",
        "Log verbosity (logs go to stderr).",
        parse.choice(LOG_LEVELS),
        "--log-level",
    ),
    Option(
        "OTEL_VMI_HV_PODS_ROOT",
        "pods_root",
        "/pods",
        "an absolute directory path",
        "Where the host's /var/lib/kubelet/pods is mounted (kubernetes source).",
        parse.absolute_path,
        "--pods-root",
    ),
    Option(
        "OTEL_VMI_HV_PROC_ROOT",
        "proc_root",
        None,
        "an existing absolute directory: the host's /proc (e.g. /host/proc from a read-only hostPath)",
        "Detect from the running QEMU's vCPU thread names in this /proc before asking libvirt "
        "(no socket, no privilege needed); see docs/proc-detection.md.",
        parse.existing_directory,
        "--proc-root",
        default_doc="unset: off",
    ),
    Option(
        "OTEL_VMI_HV_RESYNC_INTERVAL",
        "resync_interval",
        "30s",
        "a duration 1s-1h",
        "libvirt source: how often the domain list is re-read in addition to lifecycle events.",
        parse.duration_between(1, 3600),
        "--resync-interval",
    ),
    Option(
        "OTEL_VMI_HV_TLS_CERT_FILE",
        "tls_cert_file",
        None,
        "path of a readable PEM certificate (chain)",
        "Serve /metrics, /healthz and /readyz over HTTPS with this certificate (needs the key file too).",
        parse.absolute_path,
        "--tls-cert-file",
        default_doc="unset: plain HTTP",
    ),
    Option(
        "OTEL_VMI_HV_TLS_KEY_FILE",
        "tls_key_file",
        None,
        "path of a readable PEM private key",
        "Private key of the HTTPS certificate.",
        parse.absolute_path,
        "--tls-key-file",
    ),
    Option(
        "OTEL_VMI_HV_TLS_CLIENT_CA_FILE",
        "tls_client_ca_file",
        None,
        "path of a readable PEM CA bundle",
        "Require client certificates signed by this CA (mutual TLS); needs the certificate and key.",
        parse.absolute_path,
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
        parse.absolute_path,
        "--kvm-device",
    ),
    Option(
        "OTEL_VMI_HV_EVENTS",
        "events",
        "true",
        "true or false",
        "KubeVirt mode: record a Warning Event on each VMI reported qemu-tcg (once per VMI and reason,"
        " rate-limited), seen in `kubectl describe vmi`; needs create and patch on events.",
        parse.boolean,
    ),
    Option(
        "OTEL_VMI_HV_RELIST_SPREAD",
        "relist_spread",
        "10s",
        "a duration 0s-10m",
        "kubernetes source: longest random wait before a relist that follows an outage, so the agents"
        " of all nodes do not relist in the same second.",
        parse.duration_between(0, 600),
        "--relist-spread",
    ),
    Option(
        "OTEL_VMI_HV_WATCH_SILENCE_TIMEOUT",
        "watch_silence_timeout",
        "3m",
        "a duration 100ms-1h",
        "kubernetes source: a watch that brings neither an event nor a bookmark for this long is ended"
        " and resumed (the API server sends bookmarks about every minute).",
        parse.duration_between(0.1, 3600),
        "--watch-silence-timeout",
    ),
    Option(
        "OTEL_VMI_HV_WEB_MAX_CONNECTIONS",
        "web_max_connections",
        "512",
        "an integer 1-100000",
        "Open connections the HTTP server holds at most (each idle one costs about 5 KiB); beyond "
        "them, 8 more may each send one request within 1 s: /healthz and /readyz are answered, "
        "anything else gets 503, and the connection is closed.",
        parse.int_between(1, 100_000),
        "--web-max-connections",
    ),
    Option(
        "OTEL_VMI_HV_WEB_MAX_REQUESTS",
        "web_max_requests",
        "40",
        "an integer 1-10000",
        "Concurrent /metrics requests served at most; more are answered 503 (node_exporter's "
        "--web.max-requests).",
        parse.int_between(1, 10_000),
        "--web-max-requests",
    ),
    Option(
        "OTEL_VMI_HV_WEB_READ_HEADER_TIMEOUT",
        "web_read_header_timeout",
        "10s",
        "a duration 100ms-5m",
        "Time a client has to send a request's headers (and finish the TLS handshake); then it is "
        "disconnected (Go's ReadHeaderTimeout).",
        parse.duration_between(0.1, 300),
        "--web-read-header-timeout",
    ),
    Option(
        "OTEL_VMI_HV_WEB_IDLE_TIMEOUT",
        "web_idle_timeout",
        "30s",
        "a duration 1s-1h",
        "How long an idle keep-alive connection, or a client not reading its response, is kept.",
        parse.duration_between(1, 3600),
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
# Never echoed back, not even in an error message: they carry tokens.
SECRET_OPTIONS = frozenset({"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"})
