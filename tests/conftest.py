"""Shared pytest set-up: the real-peer harness fixtures, paths to the project's data, and the CI rule
that nothing skips."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

from tests.peers import in_ci

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "kubevirt"
DEMO_NODE = ROOT / "config" / "demo-node.xml"

# Real peers (libvirt daemon, Prometheus, OTLP receiver, the fake API server as ``api``) as fixtures
# for every test module. The plugin imports a peer's harness only when its fixture runs
# (tests/unit/test_unit_isolation.py).
pytest_plugins = ["tests.harness.fixtures"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport() -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """With ``CI=true``, report a skipped test (at setup, call or teardown) as failed, with why it
    skipped: a missing peer (tests/peers.py) in CI is the machine's fault, and a green run that
    skipped the real-peer tests would prove nothing. Outside CI a skip stays a skip.
    """
    report = yield
    if in_ci() and report.skipped:
        _fail_instead(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report() -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """The same for a module skipped while collected (``pytest.skip(allow_module_level=True)``)."""
    report = yield
    if in_ci() and report.skipped:
        _fail_instead(report)
    return report


def _fail_instead(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip into a failure whose one-line message (pytest's short summary prints it after
    the test's id) says why the test skipped: for a missing peer, which one and how to get it."""
    if isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
        reason = report.longrepr[2].removeprefix("Skipped: ")
    else:
        reason = str(report.longrepr)
    what = "skipped"
    xfail = getattr(report, "wasxfail", None)
    if xfail is not None:  # an expected failure proves nothing either
        what, reason = "xfailed", xfail
        del report.wasxfail
    report.outcome = "failed"
    report.longrepr = f"{what}, and with CI=true that fails the run: {reason}"
