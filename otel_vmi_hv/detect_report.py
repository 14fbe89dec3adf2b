"""Rendering of ``otel-vmi-hv detect``: the operator's first look at what the agent sees."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from otel_vmi_hv.emulation.reasons import FIXES, EmulationReason
from otel_vmi_hv.model import EMULATED, UNKNOWN, VMI, Detection


def rows(
    detections: Sequence[tuple[VMI, Detection | None]],
    node: str,
    explain: Callable[[VMI], tuple[str, str]],
) -> list[dict[str, Any]]:
    """One row per VMI; ``explain`` gives (reason, evidence) for the emulated ones."""
    result = []
    for vmi, detection in sorted(detections, key=lambda item: (item[0].namespace, item[0].name)):
        why, evidence = explain(vmi) if detection and detection.hypervisor_type == EMULATED else ("", "")
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
                # /proc and libvirt disagreed: what /proc said (the reported type is libvirt's)
                "proc_says": (detection.mismatch if detection else "") or None,
                "emulation_reason": why or None,
                "emulation_evidence": evidence or None,
            }
        )
    return result


HINTS = {
    "no_socket": "no libvirt socket where the launcher's should be: is the host's /var/lib/kubelet/pods "
    "mounted at OTEL_VMI_HV_PODS_ROOT (the DaemonSet mounts it at /pods)? "
    "On a plain host: is libvirtd running?",
    "permission_denied": "not allowed to open the libvirt socket: the agent must run as root with "
    "CAP_DAC_OVERRIDE (launcher sockets belong to uid 107); see config/kubernetes/daemonset.yaml",
    "timeout": "libvirt did not answer within OTEL_VMI_HV_LIBVIRT_TIMEOUT: the daemon may be hung",
    "busy": "an earlier libvirt call to this daemon has not returned: the daemon looks hung",
    "unreachable": "libvirt refused or dropped the connection: is the daemon running?",
    "no_domain": "the daemon has no such domain: the VMI is not (or no longer) running there",
    "no_launcher_pod": "status.activePods names no launcher pod on this node",
    "libvirt_error": "libvirt answered with an error; see the detail (--output json)",
    "invalid_name": "the domain name holds a NUL: the API server sent a broken VMI object",
    "no_process": "no QEMU process of this domain in OTEL_VMI_HV_PROC_ROOT: is the host's /proc mounted "
    "there (not the container's own)?",
    "ambiguous": "several QEMU processes run this domain and no launcher pod UID tells them apart",
    "no_thread_names": "QEMU runs without -name debug-threads=on, so /proc cannot tell its accelerator",
    "unreadable": "OTEL_VMI_HV_PROC_ROOT cannot be listed; see the detail (--output json)",
    "pending": "QEMU has no vCPU thread yet (starting, or waiting in --preconfig); asked again shortly",
}


def hints(report: list[dict[str, Any]]) -> list[str]:
    """One line per distinct failure reason in the report, saying what usually fixes it."""
    reasons = sorted({row["error"] for row in report if row["error"]})
    return [f"{reason}: {HINTS.get(reason, 'see the detail (--output json)')}" for reason in reasons]


def render_json(report: list[dict[str, Any]]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def render_table(report: list[dict[str, Any]], problems: Sequence[str] = (), accelerator: str = "") -> str:
    """The report as a table, then hints, why emulated VMIs are, and this node's accelerator."""
    headers = ("NAMESPACE", "NAME", "NODE", "HYPERVISOR", "WHY", "METHOD", "SOURCE", "ERROR")
    table = [
        (
            row["namespace"] or "-",
            row["name"],
            row["node"],
            row["hypervisor_type"],
            row["emulation_reason"] or "",
            row["method"],
            {"domain_file": row["domain_file"], "proc": "/proc"}.get(row["method"], row["libvirt_uri"]),
            row["error"] or (f"mismatch: /proc says {row['proc_says']}" if row["proc_says"] else ""),
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
    notes = hints(report)
    if notes:
        out.append("")
        out.extend(notes)
    evidence = sorted(
        {
            f"{row['emulation_reason']}: {row['emulation_evidence']}"
            for row in report
            if row["emulation_reason"]
        }
    )
    if evidence or problems:
        out.append("")
        out.extend(f"why emulated, {line}" for line in evidence)
        reasons = sorted(
            {EmulationReason(row["emulation_reason"]) for row in report if row["emulation_reason"]}
        )
        out.extend(f"fix for {reason}: {FIXES[reason]}" for reason in reasons)
        out.extend(f"cannot tell why VMIs are emulated: {problem}" for problem in problems)
    if accelerator:
        out.extend(("", f"node accelerator: {accelerator}"))
    return "\n".join(out) + "\n"


def _printable(text: str) -> str:
    """Escape control characters so a hostile domain name cannot forge table rows."""
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
