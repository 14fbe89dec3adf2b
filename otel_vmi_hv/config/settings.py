"""What loading the configuration produces (``Settings``) or raises (``ConfigError``).

Every other module of the agent reads its configuration from one frozen ``Settings``; nothing reads
the environment again after start (the OpenTelemetry SDK aside, which reads the variables that
``options.py`` validated).
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    events: bool = True  # Kubernetes Events on emulated VMIs (KubeVirt mode)
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
