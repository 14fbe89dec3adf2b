"""Rendering of ``otel-vmi-hv detect``: the operator's first look at what the agent sees."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from otel_vmi_hv.emulation.reasons import FIXES, EmulationReason
from otel_vmi_hv.model import EMULATED, UNKNOWN, VMI, Detection, FailureReason, printable


def rows(
    detections: Sequence[tuple[VMI, Detection | None]],
    node: str,
    explain: Callable[[VMI], tuple[str, str]],
    events: str = "",
) -> list[dict[str, Any]]:
    """One row per VMI; ``explain`` gives (reason, evidence) for the emulated ones, ``events`` whether
    the agent may record their Event."""
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
                "events": (events or None) if why else None,
            }
        )
    return result


_R = FailureReason
_XML = "the domain XML is not one libvirt would write, or not safe to read; see the detail (--output json)"
HINTS: dict[str, str] = {
    _R.NO_SOCKET: "no libvirt socket where the launcher's should be: is the host's /var/lib/kubelet/pods "
    "mounted at OTEL_VMI_HV_PODS_ROOT (the DaemonSet mounts it at /pods)? "
    "On a plain host: is libvirtd running?",
    _R.PERMISSION_DENIED: "not allowed to open the libvirt socket: the agent must run as root with "
    "CAP_DAC_OVERRIDE (launcher sockets belong to uid 107); see config/kubernetes/daemonset.yaml",
    _R.TIMEOUT: "libvirt did not answer within OTEL_VMI_HV_LIBVIRT_TIMEOUT: the daemon may be hung",
    _R.BUSY: "an earlier libvirt call to this daemon has not returned: the daemon looks hung",
    _R.UNREACHABLE: "libvirt refused or dropped the connection: is the daemon running?",
    _R.NO_DOMAIN: "the daemon has no such domain: the VMI is not (or no longer) running there",
    _R.NO_LAUNCHER_POD: "status.activePods names no launcher pod on this node",
    _R.LIBVIRT_ERROR: "libvirt answered with an error; see the detail (--output json)",
    _R.INVALID_NAME: "the domain name holds a NUL: the API server sent a broken VMI object",
    **dict.fromkeys((_R.TOO_LARGE, _R.MALFORMED, _R.DTD_FORBIDDEN, _R.ENTITY_FORBIDDEN, _R.WRONG_ROOT), _XML),
    **dict.fromkeys((_R.MISSING_TYPE, _R.UNSUPPORTED_TYPE), _XML),
    _R.NO_PROCESS: "no QEMU process of this domain in OTEL_VMI_HV_PROC_ROOT: is the host's /proc mounted "
    "there (not the container's own)?",
    _R.AMBIGUOUS: "several QEMU processes run this domain and no launcher pod UID tells them apart",
    _R.NO_THREAD_NAMES: "QEMU runs without -name debug-threads=on, so /proc cannot tell its accelerator",
    _R.UNREADABLE: "OTEL_VMI_HV_PROC_ROOT cannot be listed; see the detail (--output json)",
    _R.PENDING: "QEMU has no vCPU thread yet (starting, or waiting in --preconfig); asked again shortly",
    _R.NO_METHOD: "neither /proc (OTEL_VMI_HV_PROC_ROOT) nor libvirt may be asked",
    _R.INTERNAL_ERROR: "the agent failed unexpectedly: its log has the traceback; please report it",
}


def render_json(report: list[dict[str, Any]]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def render_table(
    report: list[dict[str, Any]], problems: Sequence[str] = (), accelerator: str = "", events: str = ""
) -> str:
    """The report as a table, then hints, why emulated VMIs are, this node's accelerator and Events."""
    headers = ("NAMESPACE", "NAME", "NODE", "HYPERVISOR", "WHY", "METHOD", "SOURCE", "ERROR")
    table = [headers] + [
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
    cells = [[printable(cell) for cell in line] for line in table]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    if not report:
        out.append("(no running VMIs found)")
    # One hint per distinct failure reason, saying what usually fixes it.
    failures = sorted({row["error"] for row in report if row["error"]})
    if failures:
        out += ["", *(f"{error}: {HINTS.get(error, 'see the detail (--output json)')}" for error in failures)]
    evidence = {
        f"{row['emulation_reason']}: {row['emulation_evidence']}" for row in report if row["emulation_reason"]
    }
    if evidence or problems:
        out.append("")
        out.extend(f"why emulated, {line}" for line in sorted(evidence))
        reasons = sorted(
            {EmulationReason(row["emulation_reason"]) for row in report if row["emulation_reason"]}
        )
        out.extend(f"fix for {reason}: {FIXES[reason]}" for reason in reasons)
        out.extend(f"cannot tell why VMIs are emulated: {problem}" for problem in problems)
    if accelerator:
        out.extend(("", f"node accelerator: {accelerator}"))
    if events:
        out.append(f"events: {events}")
    return "\n".join(out) + "\n"
