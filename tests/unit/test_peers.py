"""Missing peers: ``require()`` skips with one reason shape, and with CI=true every skip fails the run.

The CI rule is checked on a real pytest run in a subprocess, with tests/conftest.py's hooks, of a
small test file whose peer cannot be found (PATH is an empty folder).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.peers import require

PROMTOOL_MISSING = "missing peer 'promtool': promtool is not on PATH; get it: Debian package prometheus"

TESTS = """\
import pytest
from tests.peers import require

def test_needs_promtool():
    require("promtool")

@pytest.fixture
def promtool():
    return require("promtool")

def test_fixture_needs_promtool(promtool):
    pass

@pytest.mark.skipif(True, reason="a plain skip marker")
def test_marked():
    pass

def test_needs_nothing():
    pass
"""


def run_pytest(tmp_path: Path, ci: str, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """pytest on ``files`` (written to ``tmp_path``) with the repository's conftest hooks loaded."""
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    env = {**os.environ, "CI": ci, "PATH": str(empty), "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "--rootdir", str(tmp_path), *files],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=tmp_path,
    )  # fmt: skip


def test_with_ci_a_missing_peer_fails_the_run_naming_the_test_and_the_peer(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "true", {"test_tiny.py": TESTS})
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    rule = "skipped, and with CI=true that fails the run:"
    assert f"FAILED test_tiny.py::test_needs_promtool - {rule} {PROMTOOL_MISSING}" in out, out
    assert f"ERROR test_tiny.py::test_fixture_needs_promtool - {rule} {PROMTOOL_MISSING}" in out, out
    assert f"ERROR test_tiny.py::test_marked - {rule} a plain skip marker" in out, out
    assert "PASSED test_tiny.py::test_needs_nothing" in out
    assert "SKIPPED" not in out and "1 failed, 1 passed, 2 errors" in out, out


def test_without_ci_a_missing_peer_skips_at_the_line_that_needs_it(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "", {"test_tiny.py": TESTS})
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert f"SKIPPED [1] test_tiny.py:5: {PROMTOOL_MISSING}" in out, out  # the test's line, not peers.py's
    assert f"SKIPPED [1] test_tiny.py:11: {PROMTOOL_MISSING}" in out, out  # from a fixture: the test
    assert "1 passed, 3 skipped" in out, out


@pytest.mark.parametrize(("ci", "returncode", "expected"), [
    ("true", 2, "ERROR test_module.py - skipped, and with CI=true that fails the run: no such machine"),
    ("", 5, "SKIPPED [1] test_module.py:2: no such machine"),  # 5: no test ran
])  # fmt: skip
def test_a_module_skipped_while_collected_fails_too(
    tmp_path: Path, ci: str, returncode: int, expected: str
) -> None:
    module = 'import pytest\npytest.skip("no such machine", allow_module_level=True)\n'
    result = run_pytest(tmp_path, ci, {"test_module.py": module})
    assert result.returncode == returncode and expected in result.stdout, result.stdout + result.stderr


def test_require_returns_what_it_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    promtool = tmp_path / "promtool"
    promtool.write_text("#!/bin/sh\n")
    promtool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert require("promtool") == str(promtool)
    promtool.chmod(0o644)  # not executable: not a program
    with pytest.raises(pytest.skip.Exception, match=f"^{PROMTOOL_MISSING}"):
        require("promtool")


def test_an_unknown_peer_is_a_mistake_in_the_test_not_a_skip() -> None:
    with pytest.raises(KeyError):
        require("promtol")
