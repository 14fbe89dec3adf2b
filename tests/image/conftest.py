"""Fixtures of the image smoke tests (run by `make image-test`, which builds the image first)."""

from __future__ import annotations

import pytest

from tests.image.podman import BASE_IMAGE_ENV, CannotRun, configured_image, fail_or_skip, podman_binary


@pytest.fixture(scope="session")
def image() -> str:
    """The built image; skips locally, fails in CI, when there is none or no podman to run it."""
    try:
        podman_binary()
        return configured_image()
    except CannotRun as exc:
        fail_or_skip(str(exc))


@pytest.fixture(scope="session")
def base_image(image: str) -> str:
    """The base the image was built on (its PYTHON_IMAGE), to tell the image's own bytes apart."""
    try:
        return configured_image(BASE_IMAGE_ENV)
    except CannotRun as exc:
        fail_or_skip(str(exc))
