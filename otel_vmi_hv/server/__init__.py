"""The HTTP endpoint that serves /metrics, /healthz and /readyz.

``listener`` accepts and caps connections, ``connection`` keeps one connection's protocol and
deadlines, ``endpoints`` answers within ``ServerLimits``; ``tls_reload`` keeps the certificate
current. The names other modules use are re-exported here.
"""

from otel_vmi_hv.server.endpoints import Readiness, ServerLimits, limits_from
from otel_vmi_hv.server.listener import HttpServer, ListenError
from otel_vmi_hv.server.tls_reload import tls_context

__all__ = ["HttpServer", "ListenError", "Readiness", "ServerLimits", "limits_from", "tls_context"]
