"""Unit tests run where no real peer can: collecting them must not import the peers' harness, and no
unit test may start a peer (a harness fixture, the fake API server, the agent as a process): tests
that start a server or a daemon belong in tests/integration/ or tests/e2e/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

PEER_MODULES = (
    "tests.harness.libvirtd",
    "tests.harness.prometheus",
    "tests.harness.otlp_receiver",
    "tests.fakes.kube_apiserver",
)
# The fixtures of tests/harness/fixtures.py that start a peer, and what a module would start one with.
PEER_FIXTURES = (
    "libvirtd",
    "libvirtd_factory",
    "system_libvirtd",
    "prometheus_factory",
    "otlp_receiver",
    "api",
)
PEER_NAMES = ("AgentProcess", "FakeKubeAPIServer", "PrometheusServer", "RotelReceiver", "LibvirtDaemon")
_COLLECT_AND_REPORT = """
import json, sys, pytest
fixtures, names = set(json.loads(sys.argv[1])), set(json.loads(sys.argv[2]))
class Peers:
    starts = {}
    def pytest_collection_modifyitems(self, items):
        for item in items:
            found = (set(item.fixturenames) & fixtures) | (names & set(vars(item.module)))
            if found:
                self.starts[item.nodeid] = sorted(found)
peers = Peers()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", sys.argv[3]], plugins=[peers])
print(json.dumps({"code": int(code), "modules": sorted(sys.modules), "starts": peers.starts}))
"""


def _collect(path: Path | str) -> dict[str, Any]:
    """Collect ``path`` as a run does (the conftest's fixtures plugin included), in a fresh interpreter."""
    peers = (json.dumps(PEER_FIXTURES), json.dumps(PEER_NAMES))
    result = subprocess.run(
        [sys.executable, "-c", _COLLECT_AND_REPORT, *peers, str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, result.stdout + result.stderr
    return report


def test_collecting_the_unit_tests_imports_no_peer_harness_and_no_unit_test_starts_a_peer() -> None:
    report = _collect("tests/unit")
    modules = set(report["modules"])
    assert "tests.harness.fixtures" in modules, "the check must see the plugin being loaded"
    assert modules.isdisjoint(PEER_MODULES), sorted(modules & set(PEER_MODULES))
    assert report["starts"] == {}, "unit tests starting a peer: move them to tests/integration/"


def test_a_unit_test_starting_a_peer_is_reported(tmp_path: Path) -> None:
    """Guards the check above against one that sees nothing."""
    (tmp_path / "test_starts_peers.py").write_text(
        "from tests.agent_process import AgentProcess\n\n"
        "def test_with_the_fake(api):\n    pass\n\n"
        "def test_with_prometheus(prometheus_factory):\n    pass\n"
    )
    starts = {nodeid.rpartition("::")[2]: found for nodeid, found in _collect(tmp_path)["starts"].items()}
    assert starts == {
        "test_with_the_fake": ["AgentProcess", "api"],
        "test_with_prometheus": ["AgentProcess", "prometheus_factory"],
    }
