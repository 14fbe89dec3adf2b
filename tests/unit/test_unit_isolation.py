"""Unit tests run where no real peer can: collecting them must not import the peers' harness."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

PEER_MODULES = ("tests.harness.libvirtd", "tests.harness.prometheus", "tests.harness.otlp_receiver")
_COLLECT_THEN_LIST_MODULES = """
import json, sys, pytest
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests/unit"])
print(json.dumps({"code": int(code), "modules": sorted(sys.modules)}))
"""


def test_collecting_the_unit_tests_imports_no_peer_harness() -> None:
    """Collection imports every unit test module and the conftest's fixtures plugin, as a run does."""
    result = subprocess.run(
        [sys.executable, "-c", _COLLECT_THEN_LIST_MODULES],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, result.stdout + result.stderr
    modules = set(report["modules"])
    assert "tests.harness.fixtures" in modules, "the check must see the plugin being loaded"
    assert modules.isdisjoint(PEER_MODULES), sorted(modules & set(PEER_MODULES))
