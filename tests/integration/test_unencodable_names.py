"""A VMI name no exposition can carry (a lone surrogate, a NUL) from a broken or hostile API server
breaks neither /metrics nor OTLP for the other VMIs of the node: it is exported with U+FFFD in place
of what cannot be encoded, and counted."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.agent_process import wait_until
from tests.exposition import info_series, parse_samples
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import NODE, make_vmi
from tests.integration.kube_env import Launchers, running_agent
from tests.peers import require


def test_unencodable_names_are_replaced_and_the_rest_stays_intact(
    api: FakeKubeAPIServer, tmp_path: Path
) -> None:
    pods = tmp_path / "pods"
    launchers = Launchers(pods)
    good = make_vmi("prod", "web", NODE)
    launchers.run_vmi(good, "kvm", NODE)
    api.create(good)
    for index, name in enumerate(("lone\udcffsurrogate", "nul\x00name")):
        bad = make_vmi(
            "prod", f"placeholder-{index}", NODE, uid=f"uid-bad-{index}", pod_uid=f"pod-bad-{index}"
        )
        bad["metadata"]["name"] = name  # what no real API server would accept, but a hostile one sends
        api.create(bad)
    with running_agent(api, tmp_path, NODE, pods) as agent:
        assert agent.telemetry is not None

        def body() -> str:
            assert agent.telemetry is not None
            return agent.telemetry.scrape().body.decode()

        wait_until(lambda: len(info_series(body())) == 3, 10, "all three VMIs exported")
        series = info_series(body())
        assert series[("prod", "web")]["hypervisor_type"] == "kvm", "the good VMI is untouched"
        assert {name for _, name in series} == {"web", "lone\ufffdsurrogate", "nul\ufffdname"}
        assert [value for _, value in parse_samples(body(), "otel_vmi_hv_label_values_replaced_total")] == [
            2.0
        ]
        check = subprocess.run(
            [require("promtool"), "check", "metrics"], input=body().encode(), capture_output=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
