"""Fixtures of the image smoke tests (run by `make image-test`, which builds the image first)."""

from __future__ import annotations

import pytest

from tests.peers import require


@pytest.fixture(scope="session")
def image() -> str:
    """The built image, and podman to run it (missing peers: tests/peers.py)."""
    require("podman")
    return require("image")


@pytest.fixture(scope="session")
def base_image(image: str) -> str:
    """The base the image was built on (its PYTHON_IMAGE), to tell the image's own bytes apart."""
    return require("base-image")
