"""Settings: every environment variable and flag the agent honours, parsed and checked once.

- ``options.py``: the table (``OPTIONS``), the single source of truth for flags and the README;
- ``parsers.py``: one function per kind of value;
- ``loading.py``: ``load_settings``, the table read in order, then named checks across values;
- ``settings.py``: the frozen ``Settings`` the rest of the agent reads, and ``ConfigError``.

This package imports nothing else of the agent: what it must check with another part's code (the
HTTPS certificate) is passed in by the caller.
"""

from otel_vmi_hv.config.loading import (
    GRPC_COMPRESSIONS,
    IN_CLUSTER_TOKEN,
    TlsCheck,
    load_settings,
    unset_empty_variables,
)
from otel_vmi_hv.config.options import (
    COMPRESSIONS,
    KUBEVIRT_LIBVIRT_URI,
    LOG_LEVELS,
    NOT_READ_BY_THE_AGENT,
    OPTION_BY_ENV,
    OPTIONS,
    PROTOCOLS,
    SECRET_OPTIONS,
    SIGNAL_SETTINGS,
    SOURCES,
    STANDALONE_LIBVIRT_URI,
    Option,
)
from otel_vmi_hv.config.parsers import EXPORTERS, URI_PLACEHOLDERS, parse_duration
from otel_vmi_hv.config.settings import ConfigError, Settings

__all__ = [
    "COMPRESSIONS",
    "EXPORTERS",
    "GRPC_COMPRESSIONS",
    "IN_CLUSTER_TOKEN",
    "KUBEVIRT_LIBVIRT_URI",
    "LOG_LEVELS",
    "NOT_READ_BY_THE_AGENT",
    "OPTIONS",
    "OPTION_BY_ENV",
    "PROTOCOLS",
    "SECRET_OPTIONS",
    "SIGNAL_SETTINGS",
    "SOURCES",
    "STANDALONE_LIBVIRT_URI",
    "URI_PLACEHOLDERS",
    "ConfigError",
    "Option",
    "Settings",
    "TlsCheck",
    "load_settings",
    "parse_duration",
    "unset_empty_variables",
]
