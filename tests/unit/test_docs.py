"""The README's configuration reference is generated from the code's settings and must not drift."""

from __future__ import annotations

import re

from otel_vmi_hv.cli import config_reference
from otel_vmi_hv.config import OPTIONS
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_config_table_is_the_generated_one() -> None:
    match = re.search(r"<!-- BEGIN CONFIG TABLE.*?-->\n(.*?)<!-- END CONFIG TABLE -->", README, re.S)
    assert match, "README lost its config table markers"
    assert match.group(1) == config_reference(), "run `otel-vmi-hv config-doc` and paste it into README.md"


def test_every_documented_variable_exists_and_every_setting_is_documented() -> None:
    documented = set(re.findall(r"`((?:OTEL|OTEL_VMI_HV)_[A-Z_]+)`", README))
    known = {option.env for option in OPTIONS}
    assert known <= documented
    assert documented - known <= {"OTEL_VMI_HV_"}, f"README names unknown settings: {documented - known}"
