"""Shared pytest set-up: the real-peer harness fixtures and paths to the project's data."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "kubevirt"
DEMO_NODE = ROOT / "config" / "demo-node.xml"

# Real peers (libvirt daemon, Prometheus, OTLP receiver) as fixtures for every test module. The
# plugin imports a peer's harness only when its fixture runs (tests/unit/test_unit_isolation.py).
pytest_plugins = ["tests.harness.fixtures"]
