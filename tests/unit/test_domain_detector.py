"""Detection guarantees: bounded calls, capped stuck calls, recovery, fallback to the domain file.

The hung-daemon behaviour is simulated here with an opener that blocks on an Event (the real
SIGSTOP'd daemon is exercised in the real-daemon tests); everything else runs on libvirt's real
test driver.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import libvirt

from otel_vmi_hv.detection.libvirt.calls import LibvirtCalls, silence_libvirt_stderr
from otel_vmi_hv.detection.libvirt.domain import DomainDetector
from otel_vmi_hv.model import Detection, DetectionMethod, LibvirtTarget
from tests.conftest import DEMO_NODE, FIXTURES

silence_libvirt_stderr()
DEMO_URI = f"test://{DEMO_NODE}"


class Detector(DomainDetector):
    """A detector with its own call runner, as the agent builds them."""

    def __init__(self, timeout: float, **kwargs: Any) -> None:
        self.calls = LibvirtCalls(timeout, **kwargs)
        super().__init__(self.calls)


def _target(name: str, uri: str = DEMO_URI, domain_file: str | None = None) -> LibvirtTarget:
    return LibvirtTarget(uri=uri, domain_name=name, lifetime_key=name, domain_file=domain_file)


class GatedOpener:
    """Opens real test-driver connections, but only once the gate is open (a 'hung' daemon)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.blocked = 0
        self.lock = threading.Lock()

    def __call__(self, uri: str) -> Any:
        with self.lock:
            self.blocked += 1
        self.gate.wait()
        with self.lock:
            self.blocked -= 1
        return libvirt.openReadOnly(uri)


def test_detects_types_over_one_reused_connection() -> None:
    opened: list[str] = []

    def opener(uri: str) -> Any:
        opened.append(uri)
        return libvirt.openReadOnly(uri)

    detector = Detector(2.0, open_read_only=opener)
    assert detector.detect_target(_target("default_web-frontend")).hypervisor_type == "kvm"
    assert detector.detect_target(_target("ci_build-runner-7")).hypervisor_type == "qemu-tcg"
    assert detector.detect_target(_target("windows_win2022-dc")).hypervisor_type == "mshv"
    assert opened == [DEMO_URI]
    assert detector.calls.states() == {DEMO_URI: "connected"}


def test_missing_domain_is_unknown_with_reason() -> None:
    detection = Detector(2.0).detect_target(_target("default_no-such-vm"))
    assert (detection.hypervisor_type, detection.error) == ("unknown", "no_domain")


def test_unreachable_daemon_is_unknown_and_backs_off() -> None:
    attempts: list[float] = []

    def opener(uri: str) -> Any:
        attempts.append(time.monotonic())
        return libvirt.openReadOnly("qemu+unix:///system?socket=/nonexistent/libvirt-sock")

    detector = Detector(2.0, open_read_only=opener)
    first = detector.detect_target(_target("x"))
    second = detector.detect_target(_target("x"))
    assert (first.error, second.error) == ("no_socket", "no_socket")
    assert len(attempts) == 1, "the second detection must not hammer a daemon in backoff"
    assert detector.calls.states() == {DEMO_URI: "disconnected"}


def test_hung_open_is_bounded_and_stuck_calls_are_capped() -> None:
    opener = GatedOpener()
    recovered: list[str] = []
    detector = Detector(0.2, max_inflight_per_daemon=2, open_read_only=opener)
    detector.calls.subscribe(recovered=recovered.append)
    started = time.monotonic()
    results = [detector.detect_target(_target("default_web-frontend")) for _ in range(5)]
    elapsed = time.monotonic() - started
    assert [r.error for r in results] == ["timeout", "busy", "busy", "busy", "busy"]
    assert elapsed < 0.2 + 0.3, "busy answers must not wait for the timeout"
    assert opener.blocked == 1, "a hung daemon holds one stuck call, not one per attempt"
    assert detector.calls.states() == {DEMO_URI: "hung"}

    opener.gate.set()  # the daemon answers again (SIGCONT)
    deadline = time.monotonic() + 5
    while not recovered and time.monotonic() < deadline:
        time.sleep(0.01)
    assert recovered == [DEMO_URI]
    assert detector.detect_target(_target("default_web-frontend")).hypervisor_type == "kvm"
    assert detector.calls.states() == {DEMO_URI: "connected"}


def test_a_hung_daemon_does_not_delay_another() -> None:
    hung_uri = "test:///default"
    gate = threading.Event()

    def opener(uri: str) -> Any:
        if uri == hung_uri:
            gate.wait()
        return libvirt.openReadOnly(uri)

    detector = Detector(0.3, open_read_only=opener)
    assert detector.detect_target(_target("test", uri=hung_uri)).error == "timeout"
    started = time.monotonic()
    assert detector.detect_target(_target("default_postgres-0")).hypervisor_type == "kvm"
    assert time.monotonic() - started < 0.2
    gate.set()


def test_unreachable_socket_falls_back_to_the_launcher_domain_file(tmp_path: Path) -> None:
    domain_file = tmp_path / "default_cat8kv-01.xml"
    domain_file.write_bytes((FIXTURES / "domain-ocp411-cat8kv-01.xml").read_bytes())
    uri = f"qemu+unix:///session?socket={tmp_path}/virtqemud-sock"
    detection = Detector(1.0).detect_target(
        _target("default_cat8kv-01", uri=uri, domain_file=str(domain_file))
    )
    assert detection.hypervisor_type == "kvm"
    assert detection.method is DetectionMethod.DOMAIN_FILE
    assert detection.detail == "no_socket"


def test_unreadable_domain_file_keeps_the_libvirt_reason(tmp_path: Path) -> None:
    uri = f"qemu+unix:///session?socket={tmp_path}/virtqemud-sock"
    detection = Detector(1.0).detect_target(
        _target("a_b", uri=uri, domain_file=str(tmp_path / "missing.xml"))
    )
    assert (detection.hypervisor_type, detection.error, detection.method) == (
        "unknown",
        "no_socket",
        DetectionMethod.NONE,
    )
    assert "missing.xml" in detection.detail


def test_forget_closes_the_connection() -> None:
    detector = Detector(2.0)
    detector.detect_target(_target("default_web-frontend"))
    conn = detector.calls.call(DEMO_URI, lambda conn: conn)  # the kept connection
    detector.calls.forget(DEMO_URI)
    assert detector.calls.states() == {}

    def closed() -> bool:
        try:
            return not conn.isAlive()
        except libvirt.libvirtError:  # "invalid connection pointer": closed and freed
            return True

    deadline = time.monotonic() + 2
    while not closed() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert closed()


def test_domain_file_that_could_block_or_redirect_is_refused(tmp_path: Path) -> None:
    """The launcher's files are writable by the VM's user: a FIFO must not hang a worker, and a
    symlink must not make the agent read elsewhere."""
    uri = f"qemu+unix:///session?socket={tmp_path}/virtqemud-sock"
    fifo = tmp_path / "fifo.xml"
    os.mkfifo(fifo)
    link = tmp_path / "link.xml"
    link.symlink_to(FIXTURES / "domain-ocp411-cat8kv-01.xml")
    detector = Detector(1.0)
    for path, why in ((fifo, "not a regular file"), (link, "symbolic links")):
        results: list[Detection] = []

        def run(path: Path = path, results: list[Detection] = results) -> None:
            results.append(detector.detect_target(_target("a_b", uri=uri, domain_file=str(path))))

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(5)
        assert results, f"reading {path.name} blocked"
        assert results[0].hypervisor_type == "unknown"
        assert why in results[0].detail


def test_failure_reasons_come_from_error_codes_whatever_the_language(tmp_path: Path) -> None:
    """libvirt translates its messages; the reason must not depend on them."""
    import socket

    listening = tmp_path / "no-daemon-sock"
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(str(listening))  # bound but not listening: connection refused
    try:
        results = {}
        for name, path in (("missing", tmp_path / "missing-sock"), ("refused", listening)):
            uri = f"qemu+unix:///session?socket={path}"
            results[name] = Detector(1.0).detect_target(_target("a_b", uri=uri)).error
    finally:
        bound.close()
    assert results == {"missing": "no_socket", "refused": "unreachable"}


def test_a_launcher_daemon_that_answered_leaves_no_state() -> None:
    """KubeVirt mode: one daemon per VMI, asked once; nothing is kept per answered launcher."""
    detector = Detector(2.0, keep_connections=False)
    assert detector.detect_target(_target("default_web-frontend")).hypervisor_type == "kvm"
    assert detector.calls.states() == {}


def test_a_name_libvirt_cannot_take_is_unknown_without_asking() -> None:
    detector = Detector(2.0)
    detection = detector.detect_target(_target("default_bad\x00name"))
    assert (detection.hypervisor_type, detection.error) == ("unknown", "invalid_name")
    assert detector.calls.calls_made == 0
