"""`otel-vmi-hv detect`, the operator's first debugging tool: what it says when the agent lacks its
RBAC, its pods-root mount, or the privileges to open a launcher's socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from otel_vmi_hv.cli import main
from tests.conftest import ROOT
from tests.fakes.kube_apiserver import FakeKubeAPIServer
from tests.fakes.kubevirt_objects import NODE, make_kubevirt, make_node, make_vmi
from tests.integration.kube_env import Launchers, set_detect_environment
from tests.peers import require

SOCKET_SUFFIX = "volumes/kubernetes.io~empty-dir/libvirt-runtime/virtqemud-sock"


pytestmark = pytest.mark.fake_api(bookmark_interval=1.0)  # the fake's own pace


def _detect(
    api: FakeKubeAPIServer, tmp_path: Path, pods_root: Path, *args: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        KUBECONFIG=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
        OTEL_VMI_HV_SOURCE="kubernetes",
        OTEL_VMI_HV_NODE_NAME=NODE,
        OTEL_VMI_HV_PODS_ROOT=str(pods_root),
        OTEL_VMI_HV_LIBVIRT_TIMEOUT="2s",
    )
    return subprocess.run(
        [*prefix, sys.executable, "-m", "otel_vmi_hv", "detect", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_missing_rbac_is_named(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    api.fail_requests(100, status=403)
    result = _detect(api, tmp_path, tmp_path)
    assert result.returncode == 1
    assert "HTTP 403" in result.stderr
    assert "get, list and watch" in result.stderr and "virtualmachineinstances.kubevirt.io" in result.stderr


def test_kubevirt_not_installed_is_named(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    api.fail_requests(100, status=404)
    result = _detect(api, tmp_path, tmp_path)
    assert result.returncode == 1
    assert "is KubeVirt installed" in result.stderr


def test_missing_pods_root_mount_is_named(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    api.create(make_vmi("prod", "web", NODE, pod_uid="pod-1"))
    result = _detect(api, tmp_path, tmp_path / "not-mounted", "--output", "json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert (row["name"], row["hypervisor_type"], row["error"]) == ("web", "unknown", "no_socket")
    assert "OTEL_VMI_HV_PODS_ROOT" in result.stderr and "does not exist" in result.stderr
    table = _detect(api, tmp_path, tmp_path / "not-mounted").stdout
    assert "no_socket: no libvirt socket" in table and "/var/lib/kubelet/pods" in table


def test_missing_privileges_to_open_a_launcher_socket_are_named(
    api: FakeKubeAPIServer, tmp_path: Path
) -> None:
    require("root")  # to drop CAP_DAC_OVERRIDE from a root process
    pods = tmp_path / "pods"
    path = pods / "pod-1" / SOCKET_SUFFIX
    path.parent.mkdir(parents=True)
    os.chmod(tmp_path, 0o755)  # noqa: S103 - a test folder the socket's owner must traverse
    listener = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(path.parent)  # bind by a short relative name: the absolute path is longer than sun_path
    try:
        listener.bind(path.name)
    finally:
        os.chdir(cwd)
    listener.listen(1)
    # As in a non-root launcher: the socket belongs to its user and nobody else may write to it.
    os.chown(path, 65534, 65534)
    os.chmod(path, 0o700)
    api.create(make_vmi("prod", "web", NODE, pod_uid="pod-1"))
    setpriv = require("setpriv")
    # Root, but without the capability that lets root ignore file permissions: what the DaemonSet
    # would be if it dropped DAC_OVERRIDE.
    drop = ("--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search")
    try:
        result = _detect(api, tmp_path, pods, prefix=(setpriv, *drop, "--"))
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    assert "permission_denied" in result.stdout
    assert "CAP_DAC_OVERRIDE" in result.stdout


def _emulated_vmi(api: FakeKubeAPIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vmi = make_vmi("ci", "runner", NODE)
    Launchers(tmp_path / "pods").run_vmi(vmi, "qemu", NODE)
    api.create(vmi)
    api.create(make_node(NODE, None))
    api.create(make_kubevirt(True))
    set_detect_environment(monkeypatch, api, tmp_path, NODE, tmp_path / "pods")


def test_a_missing_events_rule_is_named_and_nothing_is_written(
    api: FakeKubeAPIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _emulated_vmi(api, tmp_path, monkeypatch)
    api.forbid("events")
    assert main(["detect"]) == 0
    forbidden = (
        "events: forbidden (create on events in ci): grant create and patch on events, see docs/kubernetes.md"
    )
    assert forbidden in capsys.readouterr().out.splitlines()
    assert main(["detect", "--output", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["emulation_reason"], row["events"]) == (
        "node_without_kvm",
        forbidden.removeprefix("events: "),
    )

    api.allow("events")
    assert main(["detect"]) == 0
    assert "events: allowed" in capsys.readouterr().out.splitlines()
    assert {(r.verb, r.params.get("dryRun")) for r in api.requests if r.resource == "events"} == {
        ("create", "All")
    }
    assert api.objects(kind="Event") == [], "detect checks with a dry run and writes no Event"

    monkeypatch.setenv("OTEL_VMI_HV_EVENTS", "false")
    assert main(["detect"]) == 0
    assert "events:" not in capsys.readouterr().out


def test_without_an_emulated_vmi_events_are_checked_in_the_agents_namespace(
    api: FakeKubeAPIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    vmi = make_vmi("prod", "web", NODE)
    Launchers(tmp_path / "pods").run_vmi(vmi, "kvm", NODE)
    api.create(vmi)
    set_detect_environment(
        monkeypatch,
        api,
        tmp_path,
        NODE,
        tmp_path / "pods",
        OTEL_RESOURCE_ATTRIBUTES="k8s.namespace.name=agents",
    )
    api.forbid("events")
    assert main(["detect"]) == 0
    assert "events: forbidden (create on events in agents)" in capsys.readouterr().out
    assert {r.namespace for r in api.requests if r.resource == "events"} == {"agents"}
