"""docs/configuration.md is generated from the option table, and says what the agent really does."""

from __future__ import annotations

import re
import socket

from otel_vmi_hv.cli import config_reference
from otel_vmi_hv.config import OPTION_BY_ENV, OPTIONS, load_settings
from tests.conftest import ROOT

PAGE = (ROOT / "docs" / "configuration.md").read_text()
# Every page a reader may take a variable name from.
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_configuration_page_is_the_generated_one() -> None:
    assert config_reference() == PAGE, "run `make docs` to regenerate docs/configuration.md"


def test_every_setting_is_documented_and_the_docs_name_no_unknown_one() -> None:
    known = {option.env for option in OPTIONS}
    assert known <= set(re.findall(r"^\| `(OTEL_[A-Z_]+)` \|", PAGE, re.M))
    for page in PAGES:
        unknown = (
            set(re.findall(r"`((?:OTEL|OTEL_VMI_HV)_[A-Z_]+)`", page.read_text())) - known - {"OTEL_VMI_HV_"}
        )
        assert not unknown, f"{page.relative_to(ROOT)} names unknown settings: {unknown}"


def _documented_defaults() -> dict[str, str]:
    """The default column of the page, by variable."""
    return {
        cells[0].strip("` "): cells[2].strip()
        for cells in (line.strip("|").split(" | ") for line in PAGE.splitlines() if line.startswith("| `"))
    }


def test_every_documented_default_is_the_effective_one() -> None:
    """What the page says each unset variable gives is what load_settings gives with no environment."""
    documented = _documented_defaults()
    settings = load_settings({})
    computed = {  # resolved at start, here with no cluster around
        "OTEL_VMI_HV_NODE_NAME": socket.gethostname(),
        "OTEL_VMI_HV_SOURCE": "libvirt",  # auto
        "OTEL_VMI_HV_LIBVIRT_URI": "qemu:///system",
    }
    assert documented["OTEL_VMI_HV_LIBVIRT_URI"].startswith("qemu:///system (libvirt source)")
    for env, option in OPTION_BY_ENV.items():
        text = documented[env]
        while text.strip("`") in OPTION_BY_ENV:  # a metrics twin: the variable for every signal
            text = documented[text.strip("`")]
        if option.field is None:
            assert text in ("SDK default", "unset"), f"{env}: the SDK's default, not the agent's"
            continue
        effective = getattr(settings, option.field)
        if env in computed:
            expected = computed[env]
        elif text.startswith("`"):
            expected = option.parse(text.strip("`"))
        elif text == "empty":
            expected = option.parse("")
        else:
            assert text.startswith(("unset", "SDK default")), f"{env}: {text!r}"
            expected = None
        assert effective == expected, f"{env}: documented {text!r}, effective {effective!r}"
