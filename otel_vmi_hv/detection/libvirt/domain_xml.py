"""Safe extraction of the hypervisor type from a libvirt domain XML document.

The document comes from a daemon or a file inside a launcher pod that a tenant's workload may
influence (hook sidecars rewrite it), so it is treated as hostile: any DTD is refused outright
(libvirt never writes one), which rules out entity expansion ("billion laughs") and external
entities or DTD fetches; the size is capped before parsing; and every failure becomes a reason
string instead of an exception, because one bad domain must never stop the agent.
"""

from __future__ import annotations

import xml.parsers.expat
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from otel_vmi_hv.model import UNKNOWN, FailureReason, hypervisor_type_for

# Far above any real domain, even one with hundreds of devices; a hostile document stays cheap to reject.
MAX_DOMAIN_XML_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class DomainType:
    """The parsed root ``type``: ``hypervisor_type`` is ``unknown`` whenever ``error`` is set."""

    hypervisor_type: str
    raw_type: str = ""
    error: FailureReason | None = None


class _Refused(Exception):
    """A declaration no libvirt document has; its one argument is the FailureReason."""


def _refuse(reason: FailureReason) -> Callable[..., NoReturn]:
    def handler(*_args: object) -> NoReturn:
        raise _Refused(reason)

    return handler


def parse_domain_type(document: str | bytes, max_bytes: int = MAX_DOMAIN_XML_BYTES) -> DomainType:
    """Return the hypervisor type named by ``<domain type=...>``; never raises.

    The whole document is parsed (not just the root tag) so a truncated or corrupted file is
    reported as malformed rather than trusted.
    """
    # surrogatepass keeps lone surrogates as invalid UTF-8, so expat rejects them below.
    data = document.encode("utf-8", "surrogatepass") if isinstance(document, str) else bytes(document)
    if len(data) > max_bytes:
        return DomainType(UNKNOWN, error=FailureReason.TOO_LARGE)

    root: dict[str, str] = {}

    def start(name: str, attrs: dict[str, str]) -> None:
        if not root:
            root.update(name=name, type=attrs.get("type", ""))

    parser = xml.parsers.expat.ParserCreate(encoding=None)
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse(FailureReason.DTD_FORBIDDEN)
    parser.EntityDeclHandler = parser.UnparsedEntityDeclHandler = parser.ExternalEntityRefHandler = _refuse(
        FailureReason.ENTITY_FORBIDDEN
    )
    parser.StartElementHandler = start
    try:
        parser.Parse(data, True)
    except _Refused as refused:
        return DomainType(UNKNOWN, error=refused.args[0])
    except (xml.parsers.expat.ExpatError, ValueError, UnicodeError):
        return DomainType(UNKNOWN, error=FailureReason.MALFORMED)

    if root.get("name") != "domain":
        return DomainType(UNKNOWN, error=FailureReason.WRONG_ROOT)
    raw = root.get("type", "")
    if not raw.strip():
        return DomainType(UNKNOWN, error=FailureReason.MISSING_TYPE)
    hypervisor_type = hypervisor_type_for(raw)
    if hypervisor_type == UNKNOWN:
        return DomainType(UNKNOWN, raw_type=raw, error=FailureReason.UNSUPPORTED_TYPE)
    return DomainType(hypervisor_type, raw_type=raw)
