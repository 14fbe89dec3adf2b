"""The agent as a hostile client or a careless operator finds it: each attack runs against the real
agent process on loopback, bounded in count and time, and asserts what must still hold."""

from __future__ import annotations

import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from tests.agent_process import AgentProcess, demo_uri, exchange, free_port, http_get, wait_until
from tests.conftest import ROOT
from tests.peers import require

BASE_ENV = {"OTEL_VMI_HV_SOURCE": "libvirt", "OTEL_VMI_HV_LIBVIRT_URI": demo_uri()}


class RestrictedAgent(AgentProcess):
    """The agent with a descriptor limit (``prlimit --nofile``) or under a command prefix."""

    def __init__(self, env: dict[str, str], nofile: int | None = None, prefix: tuple[str, ...] = ()) -> None:
        super().__init__({**BASE_ENV, **env})
        self.nofile = nofile
        self.prefix = prefix

    def start(self) -> RestrictedAgent:
        nofile = self.nofile

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.process = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "otel_vmi_hv", "run"],
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=limit,  # noqa: PLW1509 - setrlimit only, before exec
        )
        return self


@contextmanager
def agent(env: dict[str, str] | None = None, nofile: int | None = None) -> Iterator[AgentProcess]:
    with RestrictedAgent(env or {}, nofile=nofile) as process:
        process.wait_ready()
        yield process


def proc_status(process: AgentProcess, key: str) -> int:
    assert process.process is not None
    with open(f"/proc/{process.process.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))


def open_fds(process: AgentProcess) -> int:
    assert process.process is not None
    return len(os.listdir(f"/proc/{process.process.pid}/fd"))


def cpu_seconds(process: AgentProcess) -> float:
    assert process.process is not None
    with open(f"/proc/{process.process.pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def healthy(process: AgentProcess) -> bool:
    try:
        return http_get(f"{process.base_url}/healthz", timeout=2)[0] == 200
    except OSError:
        return False


def connect(process: AgentProcess, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", process.port), timeout=timeout)


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN, as a crashed or hostile client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def raw_exchange(process: AgentProcess, request: bytes) -> bytes:
    return exchange(process.port, request)


# ----------------------------------------------------------------------------- part 1: the server


def test_slowloris_connections_are_cut_and_scrapes_still_answered() -> None:
    with agent({"OTEL_VMI_HV_WEB_READ_HEADER_TIMEOUT": "1s"}) as process:
        threads_before = proc_status(process, "Threads")
        fds_before = open_fds(process)
        slow = [connect(process) for _ in range(100)]
        stop = threading.Event()
        cut: set[int] = set()

        def trickle() -> None:
            request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 1000
            for offset in range(len(request)):
                for index, client in enumerate(slow):
                    if index in cut:
                        continue
                    try:
                        client.send(request[offset : offset + 1])
                    except OSError:
                        cut.add(index)
                if len(cut) == len(slow) or stop.wait(0.2):
                    return

        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            # During the attack: other scrapes are answered, the agent grows no thread per client.
            assert process.metrics().count("kubevirt_vmi_hypervisor_info{") >= 1
            assert proc_status(process, "Threads") <= threads_before + 2
            wait_until(lambda: len(cut) == len(slow), 30, "every slow client to be disconnected")
        finally:
            stop.set()
            trickler.join()
            for client in slow:
                client.close()
        wait_until(lambda: open_fds(process) <= fds_before + 2, 10, "descriptors to be released")
        assert healthy(process)


def test_an_idle_flood_is_capped_and_memory_threads_and_fds_stay_bounded() -> None:
    with agent() as process:  # default cap: 512 connections; header deadline 10 s
        rss_before = proc_status(process, "VmRSS")
        threads_before = proc_status(process, "Threads")
        fds_before = open_fds(process)
        flood = [connect(process) for _ in range(700)]
        try:
            wait_until(lambda: open_fds(process) >= fds_before + 500, 10, "the flood to be accepted")
            assert open_fds(process) <= fds_before + 512 + 64 + 5, (
                "the cap (and lingering 503s) bound descriptors"
            )
            assert proc_status(process, "Threads") <= threads_before + 2
            assert proc_status(process, "VmRSS") - rss_before < 20 * 1024, "700 idle clients cost < 20 MiB"
            # Silent clients are dropped at the header deadline; then probes are served again.
            wait_until(lambda: healthy(process), 30, "/healthz to answer again")
        finally:
            for client in flood:
                client.close()
        wait_until(lambda: open_fds(process) <= fds_before + 2, 10, "descriptors to be released")


def test_the_connection_cap_setting_reaches_the_server() -> None:
    with agent({"OTEL_VMI_HV_WEB_MAX_CONNECTIONS": "20"}) as process:
        held = [connect(process) for _ in range(20)]
        try:
            wait_until(lambda: open_fds(process) >= 20, 10, "the connections to be accepted")
            refused = raw_exchange(process, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert refused.startswith(b"HTTP/1.1 503 ")
        finally:
            for client in held:
                client.close()


def test_clients_that_reset_or_abort_mid_request_cost_no_traceback() -> None:
    with agent() as process:
        for index in range(200):
            client = connect(process)
            if index % 3 == 0:
                client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # cut inside the headers
            elif index % 3 == 1:
                client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # never reads the answer
            else:
                client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            reset(client)
        # Scrapes still queued for the reset clients may hold the scrape limit for a moment.
        wait_until(lambda: http_get(f"{process.base_url}/metrics")[0] == 200, 20, "a scrape to be answered")
        assert "Traceback" not in process.output()
        assert "ERROR" not in process.output()


def test_a_request_cut_off_inside_its_headers_is_not_answered_as_complete() -> None:
    with agent() as process, connect(process) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        client.shutdown(socket.SHUT_WR)
        assert b"200 OK" not in client.recv(4096)


def test_running_out_of_descriptors_backs_off_logs_once_and_recovers() -> None:
    with agent(nofile=64) as process:
        held: list[socket.socket] = []
        try:
            for _ in range(100):
                held.append(connect(process, timeout=2))  # the kernel queues what the agent cannot accept
            wait_until(lambda: "cannot accept HTTP connections" in process.output(), 10, "the warning")
            cpu_before, started = cpu_seconds(process), time.monotonic()
            assert not healthy(process), "no descriptor left to accept a probe"
            busy = (cpu_seconds(process) - cpu_before) / (time.monotonic() - started)
            assert busy < 0.5, f"the agent must back off, not spin ({busy:.0%} of a core)"
        finally:
            for client in held:
                client.close()
        wait_until(lambda: healthy(process), 20, "/healthz to answer once descriptors are free")
        output = process.output()
        assert output.count("cannot accept HTTP connections") == 1
        assert "accepting HTTP connections again" in output
        assert "Traceback" not in output


def test_a_burst_of_200_connections_loses_none() -> None:
    with agent() as process:
        barrier = threading.Barrier(200)

        def probe(_: int) -> int:
            barrier.wait(10)
            return http_get(f"{process.base_url}/healthz", timeout=20)[0]

        with ThreadPoolExecutor(200) as pool:
            statuses = list(pool.map(probe, range(200)))
        assert statuses == [200] * 200


def test_scrapes_beyond_max_requests_get_503_not_a_hang() -> None:
    with agent({"OTEL_VMI_HV_WEB_MAX_REQUESTS": "1"}) as process:
        barrier = threading.Barrier(20)

        def scrape(_: int) -> int:
            barrier.wait(10)
            return http_get(f"{process.base_url}/metrics", timeout=20)[0]

        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(scrape, range(20)))
        assert set(statuses) <= {200, 503} and 200 in statuses


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"400"),
        (b"GET /\r\n\r\n", b"400"),  # HTTP/0.9: answered at once, not after 30 s
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", b"505"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", b"400"),
    ],
)
def test_malformed_requests_get_a_status_line_and_no_traceback(request_bytes: bytes, status: bytes) -> None:
    with agent() as process:
        answer = raw_exchange(process, request_bytes)
        assert answer.startswith(b"HTTP/") and answer.split(b" ", 2)[1] == status, answer[:200]
        assert "Traceback" not in process.output()


def test_a_get_body_is_not_parsed_as_the_next_request() -> None:
    smuggled = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    with agent() as process:
        answer = raw_exchange(
            process,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(smuggled), smuggled),
        )
    assert answer.count(b"HTTP/1.1 ") == 1 and answer.endswith(b"ok\n")


def test_gzip_refused_by_q_value_is_not_sent_and_metrics_vary_on_accept_and_accept_encoding() -> None:
    # (that gzip is used when allowed is tested in tests/unit/test_exposition.py and, with real
    # clients, in tests/integration/test_scrape_formats.py)
    with agent() as process:
        for accept in ("gzip;q=0", "identity, *;q=0", "br"):
            request = urllib.request.Request(
                f"{process.base_url}/metrics", headers={"Accept-Encoding": accept}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.headers["Vary"] == "Accept, Accept-Encoding"
                assert response.headers.get("Content-Encoding") is None, accept
                assert b"kubevirt_vmi_hypervisor_info{" in response.read()


# ----------------------------------------------------------------------------- part 3: configuration


def exit_of(env: dict[str, str], prefix: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    with RestrictedAgent(env, prefix=prefix) as process:
        assert process.process is not None
        code = process.process.wait(30)
        return code, process.output().strip().splitlines()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "abc"),
        ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "zstd"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "deflate"),  # valid for http/protobuf, not for grpc
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/"),  # a directory
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20x%0Ainjected"),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/nonexistent/key.pem"),
        ("OTEL_METRICS_EXEMPLAR_FILTER", "sometimes"),
        ("OTEL_VMI_HV_WEB_MAX_REQUESTS", "0"),
    ],
)
def test_every_bad_variable_exits_2_with_one_line_naming_it(variable: str, value: str) -> None:
    code, lines = exit_of({variable: value, "OTEL_METRICS_EXPORTER": "prometheus,otlp"})
    assert code == 2
    assert len(lines) == 1 and variable in lines[0], lines
    assert "Bearer" not in lines[0]


def test_empty_sdk_variables_count_as_unset_even_for_the_sdk() -> None:
    env = {
        "OTEL_METRICS_EXPORTER": "prometheus,otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "",
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": " ",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "",
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "",
    }
    with agent(env) as process:
        assert process.metrics().count("kubevirt_vmi_hypervisor_info{") >= 1
        assert "Traceback" not in process.output()


def _listen_failure(lines: list[str], host_port: str) -> str:
    failure = lines[-1]
    assert "OTEL_EXPORTER_PROMETHEUS_HOST" in failure and "OTEL_EXPORTER_PROMETHEUS_PORT" in failure
    assert host_port in failure
    assert not any("Traceback" in line for line in lines)
    return failure


def test_a_port_in_use_exits_2_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = exit_of({"OTEL_EXPORTER_PROMETHEUS_PORT": str(port)})
    assert code == 2
    assert "already in use" in _listen_failure(lines, f"127.0.0.1:{port}")


def test_an_unresolvable_host_exits_2_naming_it() -> None:
    code, lines = exit_of({"OTEL_EXPORTER_PROMETHEUS_HOST": "metrics.invalid"})
    assert code == 2
    assert "cannot be resolved" in _listen_failure(lines, "metrics.invalid:")


def test_a_privileged_port_without_the_capability_exits_2_naming_it() -> None:
    port = require("privileged-port")
    # What decides is CAP_NET_BIND_SERVICE, which a non-root user lacks: drop it from the agent.
    setpriv = require("setpriv")
    without_capability = (setpriv, "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service")
    code, lines = exit_of({"OTEL_EXPORTER_PROMETHEUS_PORT": port}, prefix=without_capability)
    assert code == 2, lines
    assert "below 1024" in _listen_failure(lines, f"127.0.0.1:{port}")
