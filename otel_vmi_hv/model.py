"""Facts shared by every layer: what a VMI is to this agent, and what a detection says.

This module sits at the bottom of the import graph: it knows nothing of libvirt, Kubernetes or
OpenTelemetry, so every other module can depend on it without cycles.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

UNKNOWN = "unknown"
EMULATED = "qemu-tcg"  # the hypervisor_type of software emulation

# libvirt's documented <domain type> values (the "virtType" choice of domaincommon.rng plus
# "parallels", the older name of "vz"). Anything outside this set is not something libvirt would
# write, so it is reported as unknown rather than trusted as a label value.
LIBVIRT_DOMAIN_TYPES = frozenset({
    "qemu", "kqemu", "kvm", "xen", "lxc", "uml", "openvz", "test", "vmware", "hyperv", "vbox", "phyp",
    "parallels", "vz", "bhyve", "hvf", "ch",
})  # fmt: skip

# Where the name users alert on differs from libvirt's word for it.
_RENAMED_TYPES = {
    "qemu": "qemu-tcg",  # plain QEMU is TCG software emulation
    "hyperv": "mshv",  # KubeVirt's hyperv-direct backend runs on /dev/mshv
}


def hypervisor_type_for(domain_type: str) -> str:
    """Map a libvirt ``<domain type>`` to the ``hypervisor_type`` label value."""
    lowered = domain_type.strip().lower()
    if lowered not in LIBVIRT_DOMAIN_TYPES:
        return UNKNOWN
    return _RENAMED_TYPES.get(lowered, lowered)


class ConnectionState(enum.StrEnum):
    """What the agent knows of one libvirt daemon (``otel_vmi_hv_libvirt_connections{state}``)."""

    IDLE = "idle"  # no connection held and none failed
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # the last connection attempt failed, or the connection closed
    HUNG = "hung"  # calls are stuck in the daemon


class DetectionMethod(enum.StrEnum):
    """How a hypervisor type was learned; exported so operators see which path worked."""

    LIBVIRT = "libvirt"  # live domain XML over a read-only connection
    DOMAIN_FILE = "domain_file"  # the launcher's persistent domain XML, when the socket is unreachable
    PROC = "proc"  # the running QEMU's vCPU thread names in /proc (no socket, no privilege)
    NONE = "none"  # nothing worked: the type is unknown


class FailureReason(enum.StrEnum):
    """Why a detection gave no type: the ``reason`` label of the errors self-metric, and `detect`'s ERROR."""

    # libvirt: opening the launcher's (or the host's) daemon, and the call itself
    NO_SOCKET = "no_socket"
    PERMISSION_DENIED = "permission_denied"  # also /proc under hidepid
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    BUSY = "busy"
    NO_DOMAIN = "no_domain"
    LIBVIRT_ERROR = "libvirt_error"
    NO_LAUNCHER_POD = "no_launcher_pod"
    INVALID_NAME = "invalid_name"
    # the domain XML, from the daemon or the launcher's domain file
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    DTD_FORBIDDEN = "dtd_forbidden"
    ENTITY_FORBIDDEN = "entity_forbidden"
    WRONG_ROOT = "wrong_root"
    MISSING_TYPE = "missing_type"
    UNSUPPORTED_TYPE = "unsupported_type"
    # /proc
    NO_PROCESS = "no_process"
    AMBIGUOUS = "ambiguous"
    NO_THREAD_NAMES = "no_thread_names"
    UNREADABLE = "unreadable"
    PENDING = "pending"  # not a failure: QEMU has no vCPU thread yet, asked again soon
    # any method
    NO_METHOD = "no_method"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class LibvirtTarget:
    """Where one VMI's domain lives: which daemon to ask and under which name.

    ``lifetime_key`` changes whenever the domain is a new instance (a new launcher pod, or in
    standalone mode a new domain id/uuid), which is what makes detection once per lifetime.
    """

    uri: str
    domain_name: str
    lifetime_key: str
    domain_file: str | None = None
    pod_uid: str | None = None  # the launcher pod (KubeVirt): tells a migration's two QEMUs apart


@dataclass(frozen=True, slots=True)
class SoftwareEmulation:
    """KubeVirt's ``SoftwareEmulation`` VMI condition with status True: a cross-architecture guest.

    Kept on the VMI so that the condition appearing or going makes the VMI compare unequal, which
    is how the tracker learns that the reason for its emulation must be looked at again.
    """

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class VMI:
    """A VMI that should be reported right now, as its source sees it."""

    key: str  # stable identity within the source (the VMI uid, or the libvirt domain uuid)
    namespace: str
    name: str
    target: LibvirtTarget
    software_emulation: SoftwareEmulation | None = None  # only the Kubernetes source knows it


@dataclass(frozen=True, slots=True)
class Detection:
    """The outcome of one attempt to learn a domain's hypervisor type."""

    hypervisor_type: str
    method: DetectionMethod
    error: FailureReason | None = None  # None on success
    detail: str = ""
    mismatch: str = ""  # where two methods answered differently: the type the other one said

    @property
    def ok(self) -> bool:
        return self.hypervisor_type != UNKNOWN

    @property
    def pending(self) -> bool:
        """Not an answer yet (a QEMU without vCPU threads): retry soon, report nothing meanwhile."""
        return self.error is FailureReason.PENDING


@dataclass(frozen=True, slots=True)
class Series:
    """One row of the info metric, in the order Prometheus sorts label names."""

    hypervisor_type: str
    name: str
    namespace: str
    node: str

    def attributes(self) -> dict[str, str]:
        """Built by hand: ``dataclasses.asdict`` deep-copies, and this runs for every row after a change."""
        return {
            "namespace": self.namespace,
            "name": self.name,
            "node": self.node,
            "hypervisor_type": self.hypervisor_type,
        }


_UNENCODABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates


def encodable_label(value: str) -> str:
    """``value`` with what no exposition can carry (NUL, lone surrogates) replaced by U+FFFD.

    Such a value only comes from a broken or hostile API server, and one of them must not make the
    whole /metrics body or OTLP request fail to encode.
    """
    return _UNENCODABLE.sub("\ufffd", value)


def printable(text: str) -> str:
    """``text`` with control characters escaped, so a hostile name cannot forge a log line or a table row."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
