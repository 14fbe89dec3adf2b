"""The image as the Dockerfile runs it by default: the demo node, unprivileged, read-only, no capabilities."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from tests.agent_process import free_port, http_get, wait_until
from tests.conftest import ROOT
from tests.exposition import info_series
from tests.image.podman import Container, image_size, podman, process_status
from tests.integration.test_demo_node import _expected_demo_series

NONROOT_UID = 65532
SHUTDOWN_BUDGET_SECONDS = 5.0
SIZE_BUDGET_BYTES = 220 * 1000 * 1000  # the image's own layers, above its Python base (podman's MB)


@pytest.fixture(scope="module")
def demo(image: str) -> Iterator[tuple[Container, str]]:
    port = free_port()
    run_args = [
        "--read-only",
        "--cap-drop=ALL",
        "--publish",
        f"127.0.0.1:{port}:9464",
        "--env",
        "OTEL_METRICS_EXPORTER=prometheus",
    ]
    with Container(image, run_args) as container:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _status(base + "/readyz") == 200, 60, f"/readyz 200:\n{container.logs()}")
        wait_until(
            lambda: len(info_series(http_get(base + "/metrics")[1])) == len(_expected_demo_series()),
            30,
            "every demo domain detected",
        )
        yield container, base


def _status(url: str) -> int | None:
    try:
        return http_get(url, timeout=2)[0]
    except OSError:
        return None  # not listening yet


def test_runs_as_nonroot_without_capabilities_on_a_read_only_root(demo: tuple[Container, str]) -> None:
    container, _ = demo
    status = process_status(container.pid)
    assert status.uid == NONROOT_UID
    assert status.effective_capabilities == 0
    write = container.exec("python", "-c", "open('/opt/otel-vmi-hv/probe', 'w')")
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write


def test_metrics_has_every_demo_series(demo: tuple[Container, str]) -> None:
    _, base = demo
    status, body = http_get(base + "/metrics")
    assert status == 200
    series = {key: labels["hypervisor_type"] for key, labels in info_series(body).items()}
    assert series == _expected_demo_series()


def test_health_endpoints_and_the_image_healthcheck_pass(demo: tuple[Container, str]) -> None:
    container, base = demo
    assert http_get(base + "/healthz")[0] == 200
    assert http_get(base + "/readyz")[0] == 200
    # The HEALTHCHECK baked into the image (kept only in the docker image format): podman runs its
    # command inside the container and answers 0 when it passed.
    healthcheck = podman("healthcheck", "run", container.id, check=False)
    assert healthcheck.returncode == 0, healthcheck.stdout + healthcheck.stderr


def test_detect_and_check_config_work_in_the_image(image: str) -> None:
    detect = podman("run", "--rm", "--read-only", "--cap-drop=ALL", image, "detect", "--output", "json")
    assert detect.returncode == 0, detect.stderr
    rows = json.loads(detect.stdout)
    assert {(r["namespace"], r["name"]): r["hypervisor_type"] for r in rows} == _expected_demo_series()
    check = podman("run", "--rm", "--read-only", image, "check-config")
    assert check.returncode == 0, check.stderr
    assert "demo-node.xml" in check.stdout  # the image's own default, not a built-in one
    bad = podman("run", "--rm", "--env", "OTEL_VMI_HV_LOG_LEVEL=loud", image, "check-config", check=False)
    assert bad.returncode == 2 and "OTEL_VMI_HV_LOG_LEVEL" in bad.stderr, bad.stderr


def test_image_size_above_its_base_stays_in_budget(image: str, base_image: str) -> None:
    own = image_size(image) - image_size(base_image)
    print(f"image {image}: {own / 1e6:.1f} MB above its base {base_image}")
    assert own <= SIZE_BUDGET_BYTES, (
        f"{own / 1e6:.1f} MB above the base, budget {SIZE_BUDGET_BYTES / 1e6:.0f}"
    )


def test_the_kubernetes_clients_asyncio_copy_is_left_out(image: str) -> None:
    """The Dockerfile removes kubernetes/aio (68 MB, never imported); the client itself stays whole."""
    probe = (
        "import importlib.util as u; print(u.find_spec('kubernetes.aio'), u.find_spec('kubernetes.client'))"
    )
    result = podman("run", "--rm", "--network=none", "--entrypoint", "python3", image, "-c", probe)
    aio, client = result.stdout.split(maxsplit=1)
    assert aio == "None" and "kubernetes/client/__init__.py" in client, result.stdout


def test_sigterm_ends_it_with_status_0_within_5_seconds(image: str) -> None:
    # A container of its own: stopping the module's one would take it from the other tests.
    with Container(
        image, ["--read-only", "--cap-drop=ALL", "--env", "OTEL_METRICS_EXPORTER=prometheus"]
    ) as c:
        wait_until(lambda: c.exec("python", "-c", _READY_PROBE).returncode == 0, 60, f"ready:\n{c.logs()}")
        status, seconds = c.terminate()
        print(f"SIGTERM to exit: {seconds:.2f}s")
        assert status == 0, c.logs()
        assert seconds < SHUTDOWN_BUDGET_SECONDS


_READY_PROBE = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/readyz', timeout=2)"


_SOURCE_DIGEST = """
import hashlib, pathlib, otel_vmi_hv
root = pathlib.Path(otel_vmi_hv.__file__).parent
digest = hashlib.sha256()
for path in sorted(root.rglob("*.py")):
    digest.update(str(path.relative_to(root)).encode() + b"\\0" + path.read_bytes())
print(digest.hexdigest())
"""


def test_the_image_holds_this_checkouts_agent(image: str) -> None:
    """A stale build cache must not pass for the code under test (podman once reused one)."""
    digest = hashlib.sha256()
    root = ROOT / "otel_vmi_hv"
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    result = podman("run", "--rm", "--network=none", "--entrypoint", "python3", image, "-c", _SOURCE_DIGEST)
    assert result.stdout.strip() == digest.hexdigest(), "the image's otel_vmi_hv differs from this checkout"
