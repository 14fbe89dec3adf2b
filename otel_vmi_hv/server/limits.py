"""What one client may hold on the metrics port, shared by the listener, connections and endpoints."""

from __future__ import annotations

from dataclasses import dataclass

from otel_vmi_hv.config import Settings, default_value


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The configurable limits default to the option table's; the probe slots are not options."""

    max_connections: int = default_value("web_max_connections")
    max_requests: int = default_value("web_max_requests")  # concurrent /metrics requests
    read_header_timeout: float = default_value("web_read_header_timeout")
    idle_timeout: float = default_value("web_idle_timeout")
    # Beyond max_connections, this many more connections may send one request, answered only if it
    # is a probe (/healthz, /readyz): liveness must not fail because others hold every connection.
    probe_slots: int = 8
    probe_head_timeout: float = 1.0  # kubelet's default probe timeout; a probe sends at once

    def head_timeout(self, beyond_cap: bool) -> float:
        """How long the request head (and the TLS handshake) may take to arrive."""
        if beyond_cap:
            return min(self.probe_head_timeout, self.read_header_timeout)
        return self.read_header_timeout


def limits_from(settings: Settings) -> ServerLimits:
    """Each configurable limit from its setting, ``web_<limit>``."""
    configured = ("max_connections", "max_requests", "read_header_timeout", "idle_timeout")
    return ServerLimits(**{name: getattr(settings, f"web_{name}") for name in configured})
