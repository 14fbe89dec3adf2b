"""Liveness and readiness probes keep answering while other clients hold every connection the agent
allows: otherwise anyone who can open ``OTEL_VMI_HV_WEB_MAX_CONNECTIONS`` connections to the port makes
kubelet restart the agent, again and again.

Each test runs the real agent on loopback, fills its connection cap (64, as in the report that found
it) with one kind of client, checks from outside that the cap is reached (a new scrape is refused),
then probes it the way kubelet does: a new connection, one ``GET`` with ``Connection: close``, a
one-second timeout.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress

import pytest

from tests.agent_process import AgentProcess, demo_uri, exchange, wait_until

CAP = 64
PROBES = 20
PROBE_TIMEOUT = 1.0  # kubelet's default timeoutSeconds
ENV = {
    "OTEL_VMI_HV_SOURCE": "libvirt",
    "OTEL_VMI_HV_LIBVIRT_URI": demo_uri(),
    "OTEL_VMI_HV_WEB_MAX_CONNECTIONS": str(CAP),
    # The flood must outlast the test: the agent's own deadlines would otherwise end it early.
    "OTEL_VMI_HV_WEB_READ_HEADER_TIMEOUT": "60s",
    "OTEL_VMI_HV_WEB_IDLE_TIMEOUT": "60s",
}


def kubelet_probe(port: int, path: str) -> tuple[int, float]:
    """One probe as kubelet's HTTP prober sends it; (status or 0 on failure, seconds taken)."""
    started = time.monotonic()
    deadline = started + PROBE_TIMEOUT
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.31\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(request)
            while True:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except OSError:
        return 0, time.monotonic() - started
    elapsed = time.monotonic() - started
    if not answer.startswith(b"HTTP/1.1 ") or elapsed > PROBE_TIMEOUT:
        return 0, elapsed
    return int(answer.split(b" ", 2)[1]), elapsed


def cap_is_reached(port: int) -> bool:
    """A new scrape is turned away for want of a connection: the cap is full."""
    answer = exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    return answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(b"too many connections\n")


def assert_probes_answer(port: int) -> None:
    results = [kubelet_probe(port, path) for path in ("/healthz", "/readyz") for _ in range(PROBES)]
    answered = [elapsed for status, elapsed in results if status == 200]
    failed = sorted({status for status, _ in results if status != 200})  # 0: no answer within 1 s
    assert len(answered) == len(results), f"{len(answered)} of {len(results)} probes answered 200 ({failed})"
    assert max(answered) < PROBE_TIMEOUT


@contextmanager
def running_agent() -> Iterator[AgentProcess]:
    with AgentProcess(ENV) as process:
        process.wait_ready()
        yield process


def hold_the_cap(stack: ExitStack, port: int, open_one: Callable[[ExitStack, int, int], None]) -> None:
    """Open ``CAP`` connections with ``open_one``, then more until a new scrape is refused. The
    connection that saw the agent ready may still count for a moment after its client closed it, and
    the last connection of the flood then lands beyond the cap (which closes it within a second)."""
    for index in range(CAP):
        open_one(stack, port, index)
    extra = iter(range(CAP, 2 * CAP))

    def reached() -> bool:
        if cap_is_reached(port):
            return True
        open_one(stack, port, next(extra))
        return False

    wait_until(reached, 10, "the cap to be reached")


def idle_connection(stack: ExitStack, port: int, index: int) -> None:
    """Every other one connects and says nothing; the others ask once, read the answer and keep
    the connection."""
    client = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
    if index % 2:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.recv(4096).startswith(b"HTTP/1.1 200 ")


def slow_scrapers(stack: ExitStack, port: int) -> None:
    """Scrapers with a tiny receive window that ask for /metrics three times in a row: half never
    read the answers, half read a little every 100 ms. (The agent's few KiB of answers then wait in
    the kernel's buffers; answers larger than those are tested in tests/unit/test_http.py.) Each one
    starts once the previous one got its first answer, so the scrapes do not all render at once and
    none is turned away by the request cap instead of holding its connection."""
    readers: list[socket.socket] = []

    def slow_scraper(stack: ExitStack, port: int, index: int) -> None:
        client = stack.enter_context(socket.socket())
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(10)
        client.connect(("127.0.0.1", port))
        client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        assert client.recv(12, socket.MSG_PEEK).startswith(b"HTTP/1.1 "), "the scrape is answered"
        if index % 2:
            readers.append(client)

    stop = threading.Event()

    def read_slowly() -> None:
        while not stop.wait(0.1):
            for client in list(readers):
                with suppress(OSError):
                    client.recv(512)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    stack.callback(reader.join)
    stack.callback(stop.set)
    hold_the_cap(stack, port, slow_scraper)


def test_probes_answer_while_idle_connections_hold_the_cap() -> None:
    with running_agent() as process, ExitStack() as flood:
        hold_the_cap(flood, process.port, idle_connection)
        assert_probes_answer(process.port)
        assert cap_is_reached(process.port), "the flood still holds the cap"


def test_probes_answer_while_slow_scrapers_hold_the_cap() -> None:
    with running_agent() as process, ExitStack() as flood:
        slow_scrapers(flood, process.port)
        assert_probes_answer(process.port)
        assert cap_is_reached(process.port), "the scrapers still hold the cap"


@pytest.mark.parametrize("opened_per_second", [50, 200])
def test_probes_answer_while_new_silent_connections_keep_arriving_beyond_the_cap(
    opened_per_second: int,
) -> None:
    # Connections beyond the cap that say nothing must not keep a probe out either.
    with running_agent() as process, ExitStack() as flood:
        hold_the_cap(flood, process.port, idle_connection)
        stop = threading.Event()
        beyond_the_cap = threading.Event()

        def open_silent_connections() -> None:
            opened: list[socket.socket] = []
            try:
                for _ in range(opened_per_second * 30):  # bounded: 30 s at most
                    if stop.wait(1 / opened_per_second):
                        return
                    with suppress(OSError):
                        opened.append(socket.create_connection(("127.0.0.1", process.port), timeout=1))
                    if len(opened) >= 20:
                        beyond_the_cap.set()
                    if len(opened) > 500:
                        opened.pop(0).close()
            finally:
                for sock in opened:
                    sock.close()

        opener = threading.Thread(target=open_silent_connections)
        opener.start()
        try:
            assert beyond_the_cap.wait(10), "connections beyond the cap to pile up"
            assert_probes_answer(process.port)
        finally:
            stop.set()
            opener.join()
