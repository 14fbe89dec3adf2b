"""SIGTERM ends the agent at once even while its watches wait on a quiet API server.

A real API server sends a bookmark about once a minute; between two, each of the agent's watches
(its VMIs, its Node, the KubeVirt CR) sits in a blocking read. Stopping must not wait for the next
bookmark of each in turn.
"""

from __future__ import annotations

from pathlib import Path

from tests.agent_process import AgentProcess
from tests.fakes.kube_apiserver import FakeKubeAPIServer

PROMISED_EXIT_SECONDS = 5.0  # README: SIGTERM or SIGINT stops the agent within 5 s


def test_sigterm_does_not_wait_for_the_next_bookmark(tmp_path: Path) -> None:
    with FakeKubeAPIServer(bookmark_interval=600) as api:
        env = {
            "KUBECONFIG": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
            "OTEL_VMI_HV_SOURCE": "kubernetes",
            "OTEL_VMI_HV_PODS_ROOT": str(tmp_path),
        }
        with AgentProcess(env) as agent:
            agent.wait_ready()
            api.wait_for_watches(3)  # the agent's three watches, open and waiting
            took = agent.terminate(timeout=30)
            assert agent.process is not None and agent.process.returncode == 0, agent.output()
            assert took < PROMISED_EXIT_SECONDS, f"exit took {took:.1f}s"
