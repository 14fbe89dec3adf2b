"""Fixtures of the image smoke tests (run by `make image-test`, which builds the image first)."""

from __future__ import annotations

import pytest

from tests.image.podman import BASE_IMAGE_ENV, cannot_run_is_reported, configured_image, podman_binary


@pytest.fixture(scope="session")
def image() -> str:
    """The built image; skips locally, fails in CI, when there is none or no podman to run it."""
    with cannot_run_is_reported():
        podman_binary()
        return configured_image()
    raise AssertionError("unreachable")  # pragma: no cover - cannot_run_is_reported fails or skips


@pytest.fixture(scope="session")
def base_image(image: str) -> str:
    """The base the image was built on (its PYTHON_IMAGE), to tell the image's own bytes apart."""
    with cannot_run_is_reported():
        return configured_image(BASE_IMAGE_ENV)
    raise AssertionError("unreachable")  # pragma: no cover
