"""Rendering of ``otel-vmi-hv detect``: the operator's first look at what the agent sees."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from otel_vmi_hv.model import UNKNOWN, VMI, Detection


def rows(detections: Sequence[tuple[VMI, Detection | None]], node: str) -> list[dict[str, Any]]:
    result = []
    for vmi, detection in sorted(detections, key=lambda item: (item[0].namespace, item[0].name)):
        result.append(
            {
                "namespace": vmi.namespace,
                "name": vmi.name,
                "node": node,
                "hypervisor_type": detection.hypervisor_type if detection else UNKNOWN,
                "method": detection.method.value if detection else "pending",
                "libvirt_uri": vmi.target.uri,
                "domain": vmi.target.domain_name,
                "domain_file": vmi.target.domain_file,
                "error": (detection.error if detection else "not detected in time") or None,
                "detail": (detection.detail if detection else "") or None,
            }
        )
    return result


def render_json(report: list[dict[str, Any]]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def render_table(report: list[dict[str, Any]]) -> str:
    headers = ("NAMESPACE", "NAME", "NODE", "HYPERVISOR", "METHOD", "SOURCE", "ERROR")
    table = [
        (
            row["namespace"] or "-",
            row["name"],
            row["node"],
            row["hypervisor_type"],
            row["method"],
            row["domain_file"] if row["method"] == "domain_file" else row["libvirt_uri"],
            row["error"] or "",
        )
        for row in report
    ]
    printable = [tuple(_printable(cell) for cell in line) for line in table]
    widths = [
        max(len(h), *(len(line[i]) for line in printable)) if printable else len(h)
        for i, h in enumerate(headers)
    ]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out.extend(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in printable
    )
    if not report:
        out.append("(no running VMIs found)")
    return "\n".join(out) + "\n"


def _printable(text: str) -> str:
    """Escape control characters so a hostile domain name cannot forge table rows."""
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
