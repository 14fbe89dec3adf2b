"""Proof that each harness piece works against the real peer, and leaves nothing behind.

These are the tests to run first when an e2e test misbehaves: they pin what the harness promises
(libvirt facts the agent relies on, Prometheus and rotel plumbing, teardown) independently of the
agent.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from tests.agent_process import wait_until
from tests.harness import libvirtd as lv
from tests.harness.otlp_receiver import Export, ProtobufSink, RotelReceiver
from tests.harness.prometheus import PrometheusServer, promtool_check_metrics
from tests.peers import require

pytest_plugins = ["tests.harness.fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _live_type(conn: libvirt.virConnect, name: str) -> tuple[str, str | None]:
    root = ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    return root.get("type", ""), root.get("id")


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------------- libvirt


@pytest.mark.libvirtd
def test_started_domain_is_active_with_live_type_qemu_over_read_only_connection(
    libvirtd: lv.LibvirtDaemon,
) -> None:
    name = _unique("default_vm")
    rec = libvirtd.define(name)
    try:
        assert rec["active"] and rec["virt_type"] == "qemu" and rec["qemu_pid"]
        assert "tcg" in _cmdline(rec["qemu_pid"])  # -accel tcg: really emulated
        ro = libvirt.openReadOnly(libvirtd.uri)
        try:
            dom = ro.lookupByName(name)
            assert dom.isActive() == 1
            assert _live_type(ro, name) == ("qemu", str(rec["id"]))
            with pytest.raises(libvirt.libvirtError) as refused:
                dom.destroy()
            assert refused.value.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED
            libvirtd.destroy(name)
            assert dom.isActive() == 0
            assert ro.lookupByName(name).ID() == -1
        finally:
            ro.close()
    finally:
        libvirtd.undefine(name)
    assert name not in {d["name"] for d in libvirtd.domains()}


@pytest.mark.libvirtd
def test_domain_started_paused_has_the_same_live_type(libvirtd: lv.LibvirtDaemon) -> None:
    name = _unique("default_vm-paused")
    try:
        rec = libvirtd.define(name, paused=True)
        assert rec["state"] == libvirt.VIR_DOMAIN_PAUSED and rec["virt_type"] == "qemu"
        ro = libvirt.openReadOnly(libvirtd.unix_uri)  # the qemu+unix spelling works the same
        try:
            assert _live_type(ro, name)[0] == "qemu"
        finally:
            ro.close()
    finally:
        libvirtd.undefine(name)


@pytest.mark.libvirtd
def test_kvm_is_refused_in_session_mode(libvirtd: lv.LibvirtDaemon) -> None:
    """Why session-mode tests are deterministic TCG: nobody cannot ask for KVM at all."""
    name = _unique("kvm-refused")
    try:
        with pytest.raises(libvirt.libvirtError):
            libvirtd.define(name, virt_type="kvm")
    finally:
        libvirtd.undefine(name)


@pytest.mark.libvirtd
def test_kill_then_restart_readopts_running_domains(libvirtd_factory: Callable[[], lv.LibvirtDaemon]) -> None:
    daemon = libvirtd_factory()
    before = {r["name"]: r for r in (daemon.define("ns_running"), daemon.define("ns_paused", paused=True))}
    old = daemon.socket_path.stat()
    ro = libvirt.openReadOnly(daemon.uri)
    daemon.kill()
    with pytest.raises(libvirt.libvirtError):
        ro.lookupByName("ns_running").XMLDesc(0)
    with pytest.raises(libvirt.libvirtError):
        libvirt.openReadOnly(daemon.uri)  # stale socket file, nobody listening: fails at once
    assert all(lv.pid_alive(r["qemu_pid"] or -1) for r in before.values()), "QEMU must survive the crash"

    daemon.restart()
    new = daemon.socket_path.stat()  # a new socket file (the inode number itself may be recycled)
    assert (new.st_ino, new.st_ctime_ns) != (old.st_ino, old.st_ctime_ns)
    after = {r["name"]: r for r in daemon.domains()}
    for name, rec in before.items():
        assert after[name]["active"] and after[name]["id"] == rec["id"]
        assert after[name]["qemu_pid"] == rec["qemu_pid"]
        assert after[name]["state"] == rec["state"]
    with pytest.raises(libvirt.libvirtError):
        ro.listAllDomains()  # old connections stay dead: clients must reconnect
    fresh = libvirt.openReadOnly(daemon.uri)
    try:
        assert _live_type(fresh, "ns_running")[0] == "qemu"
    finally:
        fresh.close()


@pytest.mark.libvirtd
def test_stop_keeps_qemu_and_restart_brings_the_domain_back(
    libvirtd_factory: Callable[[], lv.LibvirtDaemon],
) -> None:
    daemon = libvirtd_factory()
    rec = daemon.define("default_vm-b")
    daemon.stop()
    assert daemon.pid is None and lv.pid_alive(rec["qemu_pid"] or -1)
    daemon.restart()
    assert daemon.domain("default_vm-b")["id"] == rec["id"]
    daemon.destroy("default_vm-b")  # fast even after restart: tini still reaps the re-adopted QEMU
    assert not daemon.domain("default_vm-b")["active"]


@pytest.mark.libvirtd
def test_paused_daemon_makes_read_only_xmldesc_hang_until_resumed(
    libvirtd_factory: Callable[[], lv.LibvirtDaemon],
) -> None:
    daemon = libvirtd_factory()
    daemon.define("default_vm-c")
    ro = libvirt.openReadOnly(daemon.uri)
    dom = ro.lookupByName("default_vm-c")
    daemon.pause_daemon()
    results: list[str] = []
    worker = threading.Thread(target=lambda: results.append(dom.XMLDesc(0)), daemon=True)
    try:
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive(), "XMLDesc returned although libvirtd is stopped"
        with pytest.raises(RuntimeError, match="paused"):
            daemon.domains()  # the harness refuses instead of hanging
    finally:
        daemon.resume_daemon()
    worker.join(timeout=10.0)
    assert not worker.is_alive() and ET.fromstring(results[0]).get("type") == "qemu"
    ro.close()


@pytest.mark.libvirtd
def test_kubevirt_launcher_socket_reachable_directly_and_through_proc_fd(
    libvirtd_factory: Callable[[], lv.LibvirtDaemon],
) -> None:
    daemon = libvirtd_factory()
    daemon.define("default_vm-kv")
    pod_uid = "3b0a1d5e-8f2c-4a7e-9d4b-1c2e3f4a5b6c"
    long_root = Path(tempfile.mkdtemp(prefix="ovh-kubelet-pods-", dir="/tmp"))
    short_root = Path(tempfile.mkdtemp(prefix="p", dir="/tmp"))
    try:
        launcher = lv.kubevirt_launcher(long_root, pod_uid, daemon)
        expected = long_root / pod_uid / "volumes/kubernetes.io~empty-dir/libvirt-runtime/virtqemud-sock"
        assert launcher.socket_path == expected and launcher.uri.startswith("qemu+unix:///session?socket=")
        assert not launcher.fits_sun_path
        with pytest.raises(libvirt.libvirtError, match="too long"):
            libvirt.openReadOnly(launcher.uri)
        with lv.fd_socket_path(launcher.socket_path) as via_fd:
            conn = libvirt.openReadOnly(f"qemu+unix:///session?socket={via_fd}")
            assert _live_type(conn, "default_vm-kv")[0] == "qemu"
            conn.close()
        assert (launcher.empty_dir / "private/libvirt/qemu/default_vm-kv.xml").is_file()

        # A real 36-character pod UID needs a pods root of at most 7 bytes (virt-handler's /pods);
        # a short UID shows the same symlink reached directly by path.
        short = lv.kubevirt_launcher(short_root, "pod-a", daemon)
        assert short.fits_sun_path
        conn = libvirt.openReadOnly(short.uri)
        assert _live_type(conn, "default_vm-kv")[0] == "qemu"
        conn.close()
        daemon.kill()
        daemon.restart()  # the symlink keeps pointing at the re-created socket
        with lv.fd_socket_path(launcher.socket_path) as via_fd:
            conn = libvirt.openReadOnly(f"qemu+unix:///session?socket={via_fd}")
            assert conn.lookupByName("default_vm-kv").isActive()
            conn.close()
    finally:
        for root in (long_root, short_root):
            subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.mark.libvirtd
def test_system_mode_runs_a_real_kvm_domain(system_libvirtd: lv.SystemLibvirtDaemon) -> None:
    name = _unique("default_vm-kvm")
    try:
        rec = system_libvirtd.define(name, virt_type="kvm")
        assert rec["virt_type"] == "kvm" and rec["qemu_pid"]
        args = _cmdline(rec["qemu_pid"])
        assert args[args.index("-accel") + 1] == "kvm"
        threads = Path(f"/proc/{rec['qemu_pid']}/task").iterdir()
        comms = {(t / "comm").read_text().strip() for t in threads}
        assert "CPU 0/KVM" in comms
        ro = libvirt.openReadOnly(system_libvirtd.ro_uri)
        try:
            assert _live_type(ro, name)[0] == "kvm"
        finally:
            ro.close()
    finally:
        system_libvirtd.undefine(name)


# ------------------------------------------------------------------------------------- Prometheus


class _Target:
    """A tiny /metrics target whose body the test can change between scrapes."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(target.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def metrics_target() -> Iterator[_Target]:
    target = _Target(
        b"# HELP demo_info A demo.\n# TYPE demo_info gauge\n"
        b'demo_info{name="vm-a",note="q\\"uote \\\\ \\n"} 1\ndemo_info{name="vm-b",note=""} 1\n'
    )
    yield target
    target.close()


def test_prometheus_scrapes_a_loopback_target_and_applies_staleness(
    prometheus_factory: Callable[..., PrometheusServer], metrics_target: _Target
) -> None:
    prom = prometheus_factory([metrics_target.address])
    rows = prom.wait_for("demo_info", lambda r: len(r) == 2, timeout=20)
    by_name = {r["metric"]["name"]: r for r in rows}
    assert by_name["vm-a"]["metric"]["note"] == 'q"uote \\ \n'
    assert by_name["vm-a"]["metric"]["job"] == "agent" and by_name["vm-a"]["value"][1] == "1"

    metrics_target.body = (
        b'# HELP demo_info A demo.\n# TYPE demo_info gauge\ndemo_info{name="vm-b",note=""} 1\n'
    )
    rows = prom.wait_for("demo_info", lambda r: len(r) == 1, timeout=10)
    assert rows[0]["metric"]["name"] == "vm-b"
    assert prom.targets()[0]["health"] == "up"


def test_promtool_check_metrics_accepts_clean_text_and_reports_problems() -> None:
    require("promtool")
    assert promtool_check_metrics("# HELP demo_info Doc.\n# TYPE demo_info gauge\ndemo_info 1\n") == (0, "")
    rc, out = promtool_check_metrics("demo_info 1\n")
    assert rc != 0 and "no help text" in out
    rc, out = promtool_check_metrics("bad{ 1\n")
    assert rc != 0 and "parsing error" in out


# ------------------------------------------------------------------------------------------ rotel

TRICKY_VALUES = [
    "plain",
    'q"uote',
    "back\\slash",
    "new\nline",
    "ünï€😀",
    "a, b=c",
    "tab\tx",
    "cr\rx",
    "",
    "Int(5)",
    "x: y",
    "p)\nq",
    "a\n     -> z: Str(q)",
    "a)\nValue: 7",  # looked like a value plus a real Value: line in rotel's debug text
    "trailing  ",
]


def _export_once(protocol: str, receiver: RotelReceiver, marker: str, value: int | float = 1) -> None:
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    exporter: MetricExporter
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

        exporter = Grpc(endpoint=receiver.grpc_endpoint, insecure=True)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

        exporter = Http(endpoint=receiver.http_metrics_url)

    def observe(_: CallbackOptions) -> list[Observation]:
        return [
            Observation(value, {"value": v, "index": i, "flag": True, "list": ["x", "y)"]})
            for i, v in enumerate(TRICKY_VALUES)
        ]

    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.name": "harness", "marker": marker})
    )
    meter = provider.get_meter("harness-test", "1.0")
    meter.create_observable_gauge("harness_info", callbacks=[observe], description="Harness self-test.")
    meter.create_counter("harness_total", unit="1").add(3, {"kind": "a"})
    provider.force_flush()
    provider.shutdown(timeout_millis=5_000)  # exports once more: two requests in all


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_rotel_forwards_points_decoded_exactly(otlp_receiver: RotelReceiver, protocol: str) -> None:
    marker = _unique(protocol)
    _export_once("grpc" if protocol == "grpc" else "http", otlp_receiver, marker, value=1)

    def mine(e: Export) -> bool:
        return any(r.get("marker") == marker for r in e.resources)

    export = otlp_receiver.wait_for_export(mine, timeout=10)
    points = export.of("harness_info")
    assert [p.attributes["value"] for p in points] == TRICKY_VALUES
    for i, p in enumerate(points):
        assert p.attributes["index"] == i and p.attributes["flag"] is True
        assert p.attributes["list"] == ["x", "y)"]
        assert p.value == 1 and isinstance(p.value, int), "an int point must not come back as a double"
    first = points[0]
    assert first.data_type == "Gauge" and first.description == "Harness self-test."
    assert (first.scope_name, first.scope_version) == ("harness-test", "1.0")
    assert first.resource["service.name"] == "harness" and first.resource["marker"] == marker
    (counter,) = export.of("harness_total")
    assert (counter.data_type, counter.value, counter.unit) == ("Sum", 3, "1")
    assert counter.is_monotonic is True and counter.temporality == 2  # cumulative
    assert otlp_receiver.errors == []


def test_each_request_arrives_as_one_export(otlp_receiver: RotelReceiver) -> None:
    """rotel must not merge requests: one Export is one collection of the sender."""
    marker = _unique("one-to-one")
    _export_once("grpc", otlp_receiver, marker, value=2.5)

    def mine(rx: RotelReceiver) -> list[Export]:
        found = [e for e in rx.exports() if any(r.get("marker") == marker for r in e.resources)]
        return found if len(found) >= 2 else []

    exports = otlp_receiver.wait_for(mine, timeout=10)
    assert len(exports) == 2  # force_flush, then shutdown's last collection
    for export in exports:
        assert len(export.resources) == 1
        values = [p.value for p in export.of("harness_info")]
        assert values == [2.5] * len(TRICKY_VALUES) and all(isinstance(v, float) for v in values)


def test_sink_refuses_and_records_what_it_cannot_decode() -> None:
    errors: list[str] = []
    exports: list[Export] = []
    sink = ProtobufSink(exports.append, errors.append).start()
    try:
        for body, headers in [
            (b"\xff\xff\xff", {"Content-Type": "application/x-protobuf"}),
            (b"", {"Content-Type": "application/json"}),
            (b"x", {"Content-Type": "application/x-protobuf", "Content-Encoding": "br"}),
        ]:
            request = urllib.request.Request(f"{sink.endpoint}/v1/metrics", body, headers, method="POST")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code == 400
        assert len(errors) == 3 and exports == []
    finally:
        sink.stop()


# ---------------------------------------------------------------------------------------- teardown


def _no_process_references(folder: str) -> bool:
    return not lv.processes_referencing(folder)


@pytest.mark.libvirtd
def test_teardown_leaves_no_process_even_from_a_paused_daemon() -> None:
    require("libvirtd")
    daemon = lv.LibvirtDaemon.launch()
    qemu = [daemon.define("a")["qemu_pid"], daemon.define("b", paused=True)["qemu_pid"]]
    tree = [daemon.supervisor_pid, daemon.pid]
    daemon.pause_daemon()
    require("prometheus")
    prom = PrometheusServer(["127.0.0.1:9"]).start()
    rx = RotelReceiver(require("rotel")).start()
    dirs = [daemon.state_dir, rx.workdir, prom.workdir]
    pids = [p for p in [*qemu, *tree, rx.process.pid if rx.process else None] if p]
    if prom.process:
        pids.append(prom.process.pid)

    daemon.cleanup()
    rx.stop()
    prom.stop()

    assert [p for p in pids if lv.proc_state(p) is not None] == [], "process (or zombie) left behind"
    for d in dirs:
        assert lv.processes_referencing(d) == [] and not d.exists()


@pytest.mark.libvirtd
def test_a_killed_test_process_leaves_nothing_running(tmp_path: Path) -> None:
    """The dead man's switch: SIGKILL-like death (os._exit) skips every finalizer."""
    require("libvirtd")
    require("rotel")  # started by the script below
    script = tmp_path / "crash.py"
    script.write_text(
        textwrap.dedent(
            f"""\
            import json, os, sys
            sys.path.insert(0, {str(REPO_ROOT)!r})
            from tests.harness.libvirtd import LibvirtDaemon
            from tests.harness.otlp_receiver import RotelReceiver
            d = LibvirtDaemon.launch()
            d.define("a")
            rx = RotelReceiver().start()
            print(json.dumps([str(d.state_dir), str(rx.workdir), d.qemu_pids()]), flush=True)
            os._exit(1)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    state_dir, rotel_dir, qemu = json.loads(out.stdout.strip().splitlines()[-1])
    assert qemu
    for folder in (state_dir, rotel_dir):
        check = functools.partial(_no_process_references, folder)
        wait_until(check, 10, f"no process referencing {folder}", interval=0.02)
    wait_until(lambda: not Path(state_dir).exists(), 10, f"{state_dir} removed", interval=0.02)
    subprocess.run(["rm", "-rf", rotel_dir], check=False)  # rotel's folder is removed by stop() only


@pytest.mark.libvirtd
def test_fixtures_tear_everything_down_when_the_test_fails(tmp_path: Path) -> None:
    for peer in ("libvirtd", "prometheus", "rotel"):  # what the fixtures of the inner run start
        require(peer)
    record = tmp_path / "dirs.json"
    (tmp_path / "test_fails.py").write_text(
        textwrap.dedent(
            f"""\
            import json
            pytest_plugins = ["tests.harness.fixtures"]

            def test_fails(libvirtd, libvirtd_factory, prometheus_factory, otlp_receiver):
                other = libvirtd_factory()
                libvirtd.define("x"); other.define("y")
                prom = prometheus_factory(["127.0.0.1:9"])
                dirs = [str(libvirtd.state_dir), str(other.state_dir), str(prom.workdir),
                        str(otlp_receiver.workdir)]
                open({str(record)!r}, "w").write(json.dumps(dirs))
                assert False, "deliberate failure"
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         str(tmp_path / "test_fails.py")],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1 and "deliberate failure" in out.stdout, out.stdout + out.stderr
    for d in json.loads(record.read_text()):
        assert lv.processes_referencing(d) == [], d
        assert not Path(d).exists(), d
