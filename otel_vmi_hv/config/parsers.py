"""Value parsers: one raw string in, the typed value out.

A parser raises ``ValueError`` when the value is not among what its option allows (the loader then
names the variable, the value and the option's ``allowed`` text), or ``ConfigError`` with its own
message when a generic "expected ..." would not tell the operator what is wrong. The kinds of value
that many options share (``one_of``, ``integer``, ``duration``, ``boolean``) come with their
``allowed`` text, so a row writes its range once.
"""

from __future__ import annotations

import os
import re
import string
import urllib.parse
from collections.abc import Callable
from typing import Any

from otel_vmi_hv.config.settings import ConfigError

EXPORTERS = ("prometheus", "otlp", "console", "none")
URI_PLACEHOLDERS = ("pod_uid", "vmi_uid", "namespace", "name", "mode", "pods_root")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
_GRPC_STATUS_NAMES = (
    *("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ABORTED"),
    *("ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "INTERNAL"),
    *("OUT_OF_RANGE", "UNIMPLEMENTED", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"),
)


def one_of(*allowed: str, fold: bool = True, note: str = "") -> dict[str, Any]:
    """A row's ``allowed`` ("a, b or c") and ``parse`` for a choice, case folded and trimmed unless
    the SDK compares without (``fold``)."""

    def parse(raw: str) -> str:
        value = raw.strip().lower() if fold else raw
        if value not in allowed:
            raise ValueError
        return value

    return {"allowed": ", ".join(allowed[:-1]) + " or " + allowed[-1] + note, "parse": parse}


def parse_duration(raw: str) -> float:
    """Seconds from ``5s``, ``500ms``, ``2m`` or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*", raw)
    if not match:
        raise ValueError
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
    return float(match.group(1)) * scale


def between(low: float, high: float, read: Callable[[str], Any]) -> Callable[[str], Any]:
    """What ``read`` makes of the value, refused outside ``low``-``high``."""

    def parse(raw: str) -> Any:
        value = read(raw)
        if not low <= value <= high:
            raise ValueError
        return value

    return parse


def integer(low: int, high: int, note: str = "") -> dict[str, Any]:
    return {
        "allowed": f"an integer {low}-{high}{note}",
        "parse": between(low, high, lambda raw: int(raw, 10)),
    }


def duration(low: str, high: str, note: str = "") -> dict[str, Any]:
    """A row's ``allowed`` and ``parse`` for a duration within ``low``-``high``, e.g. ``100ms``, ``5m``."""
    parse = between(parse_duration(low), parse_duration(high), parse_duration)
    return {"allowed": f"a duration {low}-{high}{note}", "parse": parse}


def positive_number(raw: str) -> float:
    value = float(raw)
    if not 0 < value < float("inf"):  # also false for NaN
        raise ValueError
    return value


_TRUE_OR_FALSE = one_of("true", "false")
BOOLEAN: dict[str, Any] = {**_TRUE_OR_FALSE, "parse": lambda raw: _TRUE_OR_FALSE["parse"](raw) == "true"}


def names(
    allowed: tuple[str, ...], fold: Callable[[str], str] = str.lower
) -> Callable[[str], tuple[str, ...]]:
    """A non-empty comma list of ``allowed`` names, each case folded."""

    def parse(raw: str) -> tuple[str, ...]:
        given = tuple(fold(part.strip()) for part in raw.split(",") if part.strip())
        if not given or any(name not in allowed for name in given):
            raise ValueError
        return given

    return parse


def exporters(raw: str) -> tuple[str, ...]:
    given = names(EXPORTERS)(raw)
    if "none" in given and len(given) > 1:
        raise ConfigError(f"OTEL_METRICS_EXPORTER={raw!r}: 'none' cannot be combined with other exporters")
    return () if given == ("none",) else tuple(dict.fromkeys(given))


grpc_status_codes = names(_GRPC_STATUS_NAMES, str.upper)


def word(spaces: bool = True, printable: bool = False, longest: int = 0) -> Callable[[str], str]:
    """The trimmed value, non-empty; without ``spaces`` none inside, with ``printable`` no control
    character, with ``longest`` at most that many characters."""

    def parse(raw: str) -> str:
        value = raw.strip()
        if not value or (longest and len(value) > longest) or (printable and not value.isprintable()):
            raise ValueError
        if not spaces and any(c.isspace() for c in value):
            raise ValueError
        return value

    return parse


host = word(spaces=False)
text = word(printable=True)
node_name = word(spaces=False, printable=True, longest=253)


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
    items = [item.partition("=") for item in raw.split(",") if item.strip()]
    if any(not sep or not key.strip() for key, sep, _ in items):
        raise ValueError
    return tuple(
        (urllib.parse.unquote(key.strip()), urllib.parse.unquote(value.strip())) for key, _, value in items
    )


def headers(raw: str) -> tuple[tuple[str, str], ...]:
    """OTLP headers: as ``key_values``, and each name a token and no value with a control
    character (a newline would split the header on the wire, and gRPC logs every export)."""
    pairs = key_values(raw)
    for key, value in pairs:
        if not _HEADER_NAME.fullmatch(key) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError
    return pairs


def path(absolute: bool = True, exists: Callable[[str], bool] | None = None) -> Callable[[str], str]:
    """A non-empty path; ``absolute`` unless relative ones are allowed, and passing ``exists``."""

    def parse(raw: str) -> str:
        value = raw.strip()
        if not value or (absolute and not os.path.isabs(value)) or (exists and not exists(value)):
            raise ValueError
        return value

    return parse


absolute_path = path()
existing_directory = path(exists=os.path.isdir)
# A path the SDK will read at start: a regular file this process may open (not a directory).
readable_file = path(absolute=False, exists=lambda value: os.path.isfile(value) and os.access(value, os.R_OK))


def entry_point_names(group: str) -> Callable[[str], tuple[str, ...]]:
    """Comma list of plug-in names the SDK loads from the entry-point ``group``; an unknown one
    would fail (or be skipped) only when the exporter or resource is built."""

    def parse(raw: str) -> tuple[str, ...]:
        from importlib.metadata import entry_points

        names = tuple(name.strip() for name in raw.split(",") if name.strip())
        known = {entry.name for entry in entry_points(group=group)}
        missing = [name for name in names if name not in known]
        if missing:
            installed = ", ".join(sorted(known)) or "none"
            raise ConfigError(
                f"{raw!r} names no installed plug-in {missing[0]!r} (entry points {group}: {installed})"
            )
        return names

    return parse


def libvirt_uri(raw: str) -> str:
    """A libvirt URI, possibly a template; only the placeholders the kubernetes source fills."""
    value = host(raw)
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
