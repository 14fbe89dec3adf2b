"""The HTTP endpoint that serves /metrics, /healthz and /readyz."""
