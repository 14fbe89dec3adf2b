"""The HTTP endpoint that serves /metrics, /healthz and /readyz.

``listener`` accepts and caps connections, ``connection`` keeps one connection's protocol and
deadlines, ``endpoints`` answers; ``tls_reload`` and ``client_noise`` serve them. The names other
modules use are re-exported here.
"""

from otel_vmi_hv.server.endpoints import Readiness
from otel_vmi_hv.server.limits import ServerLimits, limits_from
from otel_vmi_hv.server.listener import HttpServer, ListenError
from otel_vmi_hv.server.tls_reload import tls_context

__all__ = ["HttpServer", "ListenError", "Readiness", "ServerLimits", "limits_from", "tls_context"]
