"""Regenerate the configuration table in docs/configuration.md from the code (`make docs`)."""

from __future__ import annotations

import re
from pathlib import Path

from otel_vmi_hv.cli import config_reference

readme = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
text = readme.read_text()
updated = re.sub(
    r"(<!-- BEGIN CONFIG TABLE.*?-->\n).*?(<!-- END CONFIG TABLE -->)",
    lambda m: m.group(1) + config_reference() + m.group(2),
    text,
    flags=re.S,
)
readme.write_text(updated)
