"""What leaves the agent: the MeterProvider and its instruments, the /metrics text, OTLP."""
