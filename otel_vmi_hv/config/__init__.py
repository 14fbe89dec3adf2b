"""Settings: every environment variable and flag the agent honours, parsed and checked once.

``options.py`` is the table (every default written once), ``parsers.py`` one function per kind of
value, ``loading.py`` reads the table and runs the checks across values, ``settings.py`` holds the
frozen ``Settings`` the rest of the agent reads. This package imports nothing else of the agent:
what it must check with another part's code (the HTTPS certificate) is passed in by the caller.
"""

from otel_vmi_hv.config.loading import load_settings, unset_empty_variables
from otel_vmi_hv.config.options import (
    KUBEVIRT_LIBVIRT_URI,
    OPTION_BY_ENV,
    OPTIONS,
    SECRET_OPTIONS,
    default_value,
)
from otel_vmi_hv.config.parsers import parse_duration
from otel_vmi_hv.config.settings import ConfigError, Settings

__all__ = [
    "KUBEVIRT_LIBVIRT_URI",
    "OPTIONS",
    "OPTION_BY_ENV",
    "SECRET_OPTIONS",
    "ConfigError",
    "Settings",
    "default_value",
    "load_settings",
    "parse_duration",
    "unset_empty_variables",
]
