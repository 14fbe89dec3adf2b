"""The KVM device probe against real devices and files that give each errno."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from otel_vmi_hv.emulation.kvm_device import probe_kvm_device
from tests.peers import require


def test_the_real_kvm_device_is_usable() -> None:
    state = probe_kvm_device(require("kvm"))
    assert state.available is True
    assert "API version 12" in state.detail


def test_missing_device(tmp_path: Path) -> None:
    state = probe_kvm_device(str(tmp_path / "kvm"))
    assert state.available is False
    assert "missing" in state.detail


def test_not_a_kvm_device(tmp_path: Path) -> None:
    plain = tmp_path / "kvm"
    plain.write_bytes(b"")
    state = probe_kvm_device(str(plain))  # open works, the ioctl is refused with ENOTTY
    assert state.available is False
    assert "not a KVM device" in state.detail


def test_dev_null_is_not_a_kvm_device() -> None:
    assert probe_kvm_device("/dev/null").available is False


def test_no_driver_behind_the_node_enxio(tmp_path: Path) -> None:
    path = tmp_path / "kvm"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))  # open(2) of a socket file fails with ENXIO
    try:
        with pytest.raises(OSError) as raised:
            os.open(path, os.O_RDWR)
        assert raised.value.errno == errno.ENXIO
        state = probe_kvm_device(str(path))
    finally:
        server.close()
    assert state.available is False
    assert "no driver" in state.detail


def _unregistered_misc_minor() -> int:
    """A misc-device minor no driver registered here (/proc/misc lists the registered ones)."""
    registered = {int(line.split()[0]) for line in Path("/proc/misc").read_text().splitlines()}
    return next(minor for minor in range(249, 128, -1) if minor not in registered)


def test_no_module_enodev(tmp_path: Path) -> None:
    """As /dev/kvm (10:232) on a node without kvm.ko: a misc-device node nobody registered."""
    require("device-nodes")
    path = tmp_path / "kvm"
    minor = _unregistered_misc_minor()
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(10, minor))
    with pytest.raises(OSError) as raised:
        os.close(os.open(path, os.O_RDWR))
    assert raised.value.errno == errno.ENODEV, f"misc minor {minor} gave {raised.value}, not ENODEV"
    state = probe_kvm_device(str(path))
    assert state.available is False
    assert "no driver" in state.detail


def test_no_permission_eacces(tmp_path: Path) -> None:
    """A device its user may not open (run in a forked child, as nobody when the test runs as root).

    Mode 000: only root's CAP_DAC_OVERRIDE opens it, and the child gives that up.
    """
    path = tmp_path / "kvm"
    path.write_bytes(b"")
    path.chmod(0o000)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, probe, report
        try:
            os.close(read_end)
            if os.getuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            state = probe_kvm_device(str(path))
            os.write(write_end, f"{state.available}|{state.detail}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        available, detail = pipe.read().split("|", 1)
    os.waitpid(pid, 0)
    assert available == "False"
    assert "no permission" in detail
