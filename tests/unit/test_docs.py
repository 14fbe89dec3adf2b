"""The configuration reference is generated from the code's settings and must not drift; the docs name
only settings that exist."""

from __future__ import annotations

import re

from otel_vmi_hv.cli import config_reference
from otel_vmi_hv.config import OPTIONS
from tests.conftest import ROOT

CONFIGURATION = ROOT / "docs" / "configuration.md"
# Every page a reader may take a variable name from.
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]


def documented_variables(text: str) -> set[str]:
    return set(re.findall(r"`((?:OTEL|OTEL_VMI_HV)_[A-Z_]+)`", text))


def test_configuration_table_is_the_generated_one() -> None:
    text = CONFIGURATION.read_text()
    match = re.search(r"<!-- BEGIN CONFIG TABLE.*?-->\n(.*?)<!-- END CONFIG TABLE -->", text, re.S)
    assert match, "docs/configuration.md lost its config table markers"
    assert match.group(1) == config_reference(), "run `make docs` (otel-vmi-hv config-doc)"


def test_every_setting_is_documented_and_the_docs_name_no_unknown_one() -> None:
    known = {option.env for option in OPTIONS}
    assert known <= documented_variables(CONFIGURATION.read_text())
    for page in PAGES:
        unknown = documented_variables(page.read_text()) - known - {"OTEL_VMI_HV_"}
        assert not unknown, f"{page.relative_to(ROOT)} names unknown settings: {unknown}"
