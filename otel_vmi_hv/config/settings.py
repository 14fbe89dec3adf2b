"""What loading the configuration produces (``Settings``) or raises (``ConfigError``).

Every other module of the agent reads its configuration from one frozen ``Settings``; nothing reads
the environment again after start (the OpenTelemetry SDK aside, which reads the variables that
``options.py`` validated). The fields have no defaults: ``load_settings`` fills each from the option
table, where every default is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable, the value and what is allowed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    metrics_exporters: tuple[str, ...]
    prometheus_host: str
    prometheus_port: int
    otlp_protocol: str
    otlp_endpoint: str | None  # None: the SDK's default
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
    kubeconfig: str | None  # KUBECONFIG, read by the kubernetes client
    proc_root: str | None  # the host's /proc for the proc detection method; None: off
    tls_cert_file: str | None
    tls_key_file: str | None
    tls_client_ca_file: str | None
    kvm_device: str
    sdk_internal_metrics: bool  # OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED, read by the SDK too
    events: bool  # Kubernetes Events on emulated VMIs (KubeVirt mode)
    relist_spread: float
    watch_silence_timeout: float
    web_max_connections: int
    web_max_requests: int
    web_read_header_timeout: float
    web_idle_timeout: float
    # What each value came from ("env", "flag", "default"), for check-config.
    origins: tuple[tuple[str, str], ...] = field(compare=False)

    @property
    def exports_prometheus(self) -> bool:
        return "prometheus" in self.metrics_exporters

    @property
    def exports_otlp(self) -> bool:
        return "otlp" in self.metrics_exporters
