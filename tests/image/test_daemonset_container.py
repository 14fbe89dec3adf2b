"""The image run with the DaemonSet's settings against a real KubeVirt-like node (kubevirt_node.py).

The path no other test crosses: the container, its capabilities and a real launcher socket together.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.agent_process import free_port, http_get, wait_until
from tests.exposition import info_series, parse_samples
from tests.image.daemonset import DaemonSetContainer
from tests.image.kubevirt_node import NODE, Node, daemonset_run_args, kubevirt_node
from tests.image.podman import Container, podman, process_status
from tests.peers import require

CAP_DAC_OVERRIDE_BIT = 1 << 1
IDLE_RSS_TARGET_BYTES = 80 * 1024 * 1024  # BENCHMARKS.md: the agent on every node costs at most this idle
SHUTDOWN_BUDGET_SECONDS = 5.0


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    require("libvirtd")
    with kubevirt_node() as started:
        yield started


@pytest.fixture(scope="module")
def daemonset() -> DaemonSetContainer:
    return DaemonSetContainer.load()


def _detect(image: str, run_args: list[str]) -> dict[tuple[str, str], dict[str, str]]:
    result = podman("run", "--rm", *run_args, image, "detect", "--output", "json", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return {(row["namespace"], row["name"]): row for row in json.loads(result.stdout)}


@pytest.fixture(scope="module")
def agent(image: str, node: Node, daemonset: DaemonSetContainer) -> Iterator[tuple[Container, str]]:
    port = free_port()
    with Container(image, daemonset_run_args(daemonset, node, port), daemonset.command()) as container:
        base = f"http://127.0.0.1:{port}"

        def detected() -> dict[tuple[str, str], str] | None:
            try:
                status, body = http_get(base + "/metrics", timeout=2)
            except OSError:
                return None
            series = {key: labels["hypervisor_type"] for key, labels in info_series(body).items()}
            return series if status == 200 and series == node.expected else None

        wait_until(detected, 60, f"both VMIs detected; container log:\n{container.logs()}", interval=0.2)
        yield container, base


def test_runs_with_exactly_the_manifests_privileges(
    agent: tuple[Container, str], daemonset: DaemonSetContainer
) -> None:
    container, _ = agent
    status = process_status(container.pid)
    assert daemonset.capabilities_added == ["DAC_OVERRIDE"]
    assert status.uid == 0
    assert status.effective_capabilities == CAP_DAC_OVERRIDE_BIT
    assert status.no_new_privs
    write = container.exec("python", "-c", "open('/probe', 'w')")
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write
    pods_write = container.exec("python", "-c", f"open('{daemonset.pods_mount_path}/probe', 'w')")
    assert pods_write.returncode != 0 and "Read-only file system" in pods_write.stderr, pods_write
    tmp_write = container.exec("python", "-c", "open('/tmp/probe', 'w').write('x')")
    assert tmp_write.returncode == 0, tmp_write.stderr


def test_both_launchers_are_reported_with_their_types(agent: tuple[Container, str], node: Node) -> None:
    _, base = agent
    body = http_get(base + "/metrics")[1]
    series = info_series(body)
    assert {key: labels["hypervisor_type"] for key, labels in series.items()} == node.expected
    assert {labels["node"] for labels in series.values()} == {NODE}
    methods = {labels["method"]: value for labels, value in _histogram_counts(body)}
    assert methods.get("libvirt") == 1 and methods.get("domain_file") == 1, methods


def _histogram_counts(body: str) -> list[tuple[dict[str, str], float]]:
    return parse_samples(body, "otel_vmi_hv_detection_duration_seconds_count")


def test_detect_in_the_pod_names_how_each_launcher_was_read(agent: tuple[Container, str], node: Node) -> None:
    container, _ = agent
    result = container.exec("otel-vmi-hv", "detect", "--output", "json")
    assert result.returncode == 0, result.stderr
    rows = {(row["namespace"], row["name"]): row for row in json.loads(result.stdout)}
    assert rows[node.over_socket]["method"] == "libvirt"
    assert rows[node.from_file]["method"] == "domain_file"
    assert {key: row["hypervisor_type"] for key, row in rows.items()} == node.expected


def test_without_dac_override_both_launchers_are_permission_denied(
    image: str, node: Node, daemonset: DaemonSetContainer
) -> None:
    rows = _detect(image, daemonset_run_args(daemonset, node, free_port(), drop=frozenset({"DAC_OVERRIDE"})))
    assert set(rows) == set(node.expected)
    for key, row in rows.items():
        assert (row["hypervisor_type"], row["error"]) == ("unknown", "permission_denied"), (key, row)


def test_idle_memory_fits_the_manifests_request_and_limit(
    agent: tuple[Container, str], daemonset: DaemonSetContainer
) -> None:
    container, _ = agent
    rss = process_status(container.pid).rss_bytes
    mib = 1024 * 1024
    print(
        f"idle RSS {rss / mib:.1f} MiB (target {IDLE_RSS_TARGET_BYTES / mib:.0f} MiB); DaemonSet request "
        f"{daemonset.memory_request / mib:.0f} MiB, limit {daemonset.memory_limit / mib:.0f} MiB"
    )
    assert rss <= IDLE_RSS_TARGET_BYTES
    assert rss <= daemonset.memory_request <= daemonset.memory_limit


def test_sigterm_ends_it_with_status_0_within_5_seconds(
    image: str, node: Node, daemonset: DaemonSetContainer
) -> None:
    port = free_port()
    with Container(image, daemonset_run_args(daemonset, node, port), daemonset.command()) as container:
        wait_until(lambda: _ready(f"http://127.0.0.1:{port}/readyz"), 60, f"ready; log:\n{container.logs()}")
        status, seconds = container.terminate()
        print(f"SIGTERM to exit with the DaemonSet's settings: {seconds:.2f}s")
        assert status == 0, container.logs()
        assert seconds < SHUTDOWN_BUDGET_SECONDS


def _ready(url: str) -> bool:
    try:
        return http_get(url, timeout=2)[0] == 200
    except OSError:
        return False
