"""The KVM device probe against real devices and files that give each errno."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from otel_vmi_hv.emulation.kvm_device import probe_kvm_device


def _kvm_usable() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _kvm_usable(), reason="/dev/kvm cannot be opened on this machine")
def test_the_real_kvm_device_is_usable() -> None:
    state = probe_kvm_device("/dev/kvm")
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


def _char_device(path: Path, major: int, minor: int) -> None:
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
    except OSError as error:
        pytest.skip(f"cannot create a device node here: {error}")


def test_no_module_enodev(tmp_path: Path) -> None:
    path = tmp_path / "kvm"
    _char_device(path, 10, 249)  # a misc minor nobody registered, as /dev/kvm (10:232) without kvm.ko
    try:
        os.close(os.open(path, os.O_RDWR))
        pytest.skip("misc minor 249 has a driver on this machine")
    except OSError as error:
        if error.errno != errno.ENODEV:
            pytest.skip(f"device nodes give {errno.errorcode.get(error.errno or 0)} here, not ENODEV")
    state = probe_kvm_device(str(path))
    assert state.available is False
    assert "no driver" in state.detail


def test_no_permission_eacces(tmp_path: Path) -> None:
    """As an unprivileged user, a root-only device cannot be opened (run in a forked child)."""
    path = tmp_path / "kvm"
    path.write_bytes(b"")
    path.chmod(0o600)
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
    if os.getuid() != 0 and os.access(path, os.R_OK | os.W_OK):
        pytest.skip("the test user can open its own file")
    assert available == "False"
    assert "no permission" in detail
