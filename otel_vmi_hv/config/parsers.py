"""Value parsers: one raw string in, the typed value out.

A parser raises ``ValueError`` when the value is not among what its option allows (the loader then
names the variable, the value and the option's ``allowed`` text), or ``ConfigError`` with its own
message when a generic "expected ..." would not tell the operator what is wrong.
"""

from __future__ import annotations

import os
import re
import string
import urllib.parse
from collections.abc import Callable

from otel_vmi_hv.config.settings import ConfigError

EXPORTERS = ("prometheus", "otlp", "console", "none")
URI_PLACEHOLDERS = ("pod_uid", "vmi_uid", "namespace", "name", "mode", "pods_root")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
_GRPC_STATUS_NAMES = frozenset(
    {
        *("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ABORTED"),
        *("ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "INTERNAL"),
        *("OUT_OF_RANGE", "UNIMPLEMENTED", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"),
    }
)


def choice(allowed: tuple[str, ...], fold: bool = True) -> Callable[[str], str]:
    """One of ``allowed``, case folded and trimmed unless the SDK compares without (``fold``)."""

    def parse(raw: str) -> str:
        value = raw.strip().lower() if fold else raw
        if value not in allowed:
            raise ValueError
        return value

    return parse


def parse_duration(raw: str) -> float:
    """Seconds from ``5s``, ``500ms``, ``2m`` or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*", raw)
    if not match:
        raise ValueError
    number = float(match.group(1))
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
    return number * scale


def duration_between(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        seconds = parse_duration(raw)
        if not low <= seconds <= high:
            raise ValueError
        return seconds

    return parse


def int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip(), 10)
        if not low <= value <= high:
            raise ValueError
        return value

    return parse


def positive_number(raw: str) -> float:
    value = float(raw)
    if not 0 < value < float("inf"):  # also false for NaN
        raise ValueError
    return value


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise ValueError
    return value == "true"


def exporters(raw: str) -> tuple[str, ...]:
    names = [part.strip().lower() for part in raw.split(",") if part.strip()]
    if not names or any(name not in EXPORTERS for name in names):
        raise ValueError
    if "none" in names and len(names) > 1:
        raise ConfigError(f"OTEL_METRICS_EXPORTER={raw!r}: 'none' cannot be combined with other exporters")
    if names == ["none"]:
        return ()
    return tuple(dict.fromkeys(names))


def host(raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError
    return value


def endpoint(raw: str) -> str:
    value = raw.strip()
    parsed = urllib.parse.urlsplit(value if "://" in value else f"//{value}")
    if parsed.scheme not in ("", "http", "https") or not parsed.hostname:
        raise ValueError
    if parsed.username or parsed.password:
        # It would end up in logs and check-config; credentials belong in the headers variable.
        raise ConfigError(
            "credentials in the URL are refused (they would show in logs): "
            "put them in OTEL_EXPORTER_OTLP_HEADERS"
        )
    _ = parsed.port  # raises ValueError for a port that is not a number or out of range
    return value


def key_values(raw: str) -> tuple[tuple[str, str], ...]:
    """W3C-baggage-like ``k=v,k2=v2`` (OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS)."""
    pairs = []
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError
        pairs.append((urllib.parse.unquote(key.strip()), urllib.parse.unquote(value.strip())))
    return tuple(pairs)


def headers(raw: str) -> tuple[tuple[str, str], ...]:
    """OTLP headers: as ``key_values``, and each name a token and no value with a control
    character (a newline would split the header on the wire, and gRPC logs every export)."""
    pairs = key_values(raw)
    for key, value in pairs:
        if not _HEADER_NAME.fullmatch(key) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError
    return pairs


def path(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError
    return value


def absolute_path(raw: str) -> str:
    value = path(raw)
    if not os.path.isabs(value):
        raise ValueError
    return value


def existing_directory(raw: str) -> str:
    value = absolute_path(raw)
    if not os.path.isdir(value):
        raise ValueError
    return value


def readable_file(raw: str) -> str:
    """A path the SDK will read at start: a regular file this process may open (not a directory)."""
    value = path(raw)
    if not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise ValueError
    return value


def entry_point_names(group: str) -> Callable[[str], tuple[str, ...]]:
    """Comma list of plug-in names the SDK loads from the entry-point ``group``; an unknown one
    would fail (or be skipped) only when the exporter or resource is built."""

    def parse(raw: str) -> tuple[str, ...]:
        from importlib.metadata import entry_points

        names = tuple(name.strip() for name in raw.split(",") if name.strip())
        known = {entry.name for entry in entry_points(group=group)}
        missing = [name for name in names if name not in known]
        if missing:
            raise ConfigError(
                f"{raw!r} names no installed plug-in {missing[0]!r} (entry points {group}: "
                + (", ".join(sorted(known)) or "none")
                + ")"
            )
        return names

    return parse


def grpc_status_codes(raw: str) -> tuple[str, ...]:
    names = tuple(code.strip().upper() for code in raw.split(",") if code.strip())
    if not names or any(name not in _GRPC_STATUS_NAMES for name in names):
        raise ValueError
    return names


def node_name(raw: str) -> str:
    value = raw.strip()
    if not value or len(value) > 253 or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError
    return value


def libvirt_uri(raw: str) -> str:
    """A libvirt URI, possibly a template; only the placeholders the kubernetes source fills."""
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError
    allowed = ", ".join("{" + p + "}" for p in URI_PLACEHOLDERS)
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
    except ValueError:
        raise ConfigError(
            f"OTEL_VMI_HV_LIBVIRT_URI={raw!r}: unbalanced braces; placeholders are {allowed}"
        ) from None
    unknown = [name for name in fields if name not in URI_PLACEHOLDERS]
    if unknown:
        raise ConfigError(
            f"OTEL_VMI_HV_LIBVIRT_URI={raw!r}: unknown placeholder {{{unknown[0]}}}; allowed: {allowed}"
        )
    return value


def text(raw: str) -> str:
    value = raw.strip()
    if not value or not value.isprintable():
        raise ValueError
    return value
