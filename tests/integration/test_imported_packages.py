"""Each configuration loads the packages it uses and nothing else: the agent's memory is what its
libraries cost, so a library that a configuration does not need must not be imported.

The agent runs as a real process (through tests/modules_at_ready.py, which starts its ``main`` and
lists ``sys.modules`` once ``/readyz`` answers 200); a module is attributed to the installed
distribution whose files hold it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.agent_configurations import (
    Configuration,
    daemonset,
    demo,
    distributions,
    proc_only,
    reported_modules,
    reporting_agent,
    requirement_closure,
)
from tests.agent_process import free_port
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import NODE, make_vmi

pytestmark = pytest.mark.fake_api(bookmark_interval=0.5)


def _loaded(configuration: Configuration) -> tuple[set[str], dict[str, str]]:
    with reporting_agent(configuration) as agent:  # killed on leaving: its shutdown is not the point
        modules = reported_modules(agent)
    return distributions(modules), modules


def _cluster(kind: str, api: FakeKubeAPIServer, tmp_path: Path) -> Configuration:
    api.create(make_vmi("prod", "web", NODE))
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    otlp = f"http://127.0.0.1:{free_port()}"  # nothing listens: exports fail, which costs nothing here
    if kind == "proc-only":
        return proc_only(kubeconfig, otlp)
    pods = tmp_path / "pods"
    pods.mkdir()
    if kind == "daemonset-http":
        return daemonset(kubeconfig, pods, otlp, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    return daemonset(kubeconfig, pods, otlp)


CONFIGURATIONS: dict[str, Callable[[FakeKubeAPIServer, Path], Configuration]] = {
    "demo": lambda api, tmp_path: demo(),
    "daemonset": lambda api, tmp_path: _cluster("daemonset", api, tmp_path),
    "daemonset-http": lambda api, tmp_path: _cluster("daemonset-http", api, tmp_path),
    "proc-only": lambda api, tmp_path: _cluster("proc-only", api, tmp_path),
}


@pytest.mark.parametrize("kind", list(CONFIGURATIONS))
def test_a_configuration_loads_what_it_uses_and_nothing_else(
    kind: str, api: FakeKubeAPIServer, tmp_path: Path
) -> None:
    configuration = CONFIGURATIONS[kind](api, tmp_path)
    loaded, modules = _loaded(configuration)
    assert configuration.uses <= loaded, f"{configuration.name}: not loaded: {configuration.uses - loaded}"
    outside = loaded - requirement_closure(configuration.uses)
    assert not outside, f"{configuration.name} loaded packages it does not use: {sorted(outside)}"
    tops = {name.partition(".")[0] for name in modules}
    # The three rules, by top-level package as well.
    assert ("kubernetes" in tops) == (kind != "demo")
    assert ("grpc" in tops) == (kind in ("daemonset", "proc-only"))
    assert ("libvirt" in tops) == (kind != "proc-only")
    assert "prometheus_client" not in tops, "the agent renders /metrics itself"
