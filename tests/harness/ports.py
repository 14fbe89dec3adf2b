"""Loopback ports for the real peers the tests start (Prometheus, rotel, the agent under test).

Every peer is bound to 127.0.0.1 only: the tests must never listen on, or reach, anything else.
A port picked here is free at the time of the call, not reserved: another process (other engineers
run their own suites on the same machine) may take it before the peer binds it. Callers therefore
start the peer, check that it really bound the port (``wait_for_port``) and retry with fresh ports when
it did not; the harness classes do exactly that.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

LOOPBACK = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    All sockets stay bound until every port is chosen, so the ports are distinct from one another
    (asking the kernel for port 0 twice in a row may otherwise hand back the same number).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port() -> int:
    """Return one TCP port on 127.0.0.1 that was free a moment ago (see the module docstring)."""
    return free_ports(1)[0]


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """Tell whether something accepts TCP connections on ``host:port`` right now."""
    if host != LOOPBACK:
        raise ValueError(f"the harness only talks to {LOOPBACK}, not {host}")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    port: int,
    timeout: float,
    process: subprocess.Popen[bytes] | None = None,
    poll_interval: float = 0.01,
) -> None:
    """Block until 127.0.0.1:``port`` accepts a connection, with a deadline.

    When ``process`` is given and exits first, fail at once instead of waiting out the deadline:
    a peer that could not bind its port (taken by someone else) dies immediately, and the caller
    wants to retry on other ports without delay.
    """
    deadline = time.monotonic() + timeout
    while True:
        if port_accepts(port):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process {process.pid} exited with {process.returncode} before port {port} opened"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted connections on {LOOPBACK}:{port} within {timeout:.1f}s")
        time.sleep(poll_interval)
