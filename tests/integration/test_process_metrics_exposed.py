"""The agent's own process metrics on /metrics, with values of the agent process itself."""

from __future__ import annotations

from tests.agent_process import AgentProcess, demo_uri
from tests.exposition import parse_samples

NAMES = (
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_threads",
)


def test_metrics_carry_the_agent_process_metrics() -> None:
    env = {"OTEL_VMI_HV_SOURCE": "libvirt", "OTEL_VMI_HV_LIBVIRT_URI": demo_uri()}
    with AgentProcess(env) as agent:
        agent.wait_ready()
        text = agent.metrics()
        rss_kib = agent.rss_mib() * 1024
    for name in NAMES:
        assert len(parse_samples(text, name)) == 1, name
    ((_, resident),) = parse_samples(text, "process_resident_memory_bytes")
    assert abs(resident / 1024 - rss_kib) <= 0.10 * rss_kib
