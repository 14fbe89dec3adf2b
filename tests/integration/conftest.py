"""What the integration tests share: their fake API server's pace."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def fake_api_options() -> dict[str, Any]:
    """A BOOKMARK every 0.2 s (the fake's default is 1 s), so that a test waiting on a watch that
    resumes from a bookmark waits fractions of a second, not seconds."""
    return {"bookmark_interval": 0.2}
