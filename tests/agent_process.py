"""Runs the agent as users do (a subprocess configured by environment) and reads its endpoints."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

from tests.conftest import ROOT

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DeadlinePassed(AssertionError):
    """What ``wait_until`` raises: a wrapper adding its own details catches this, not a failed assert."""


def wait_until(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    pause: Callable[[float], object] = time.sleep,
) -> T:
    """Poll ``check`` until it returns something truthy and return that; fail with ``what`` at the
    deadline. The one poll-with-deadline of the test suite: the harness's and the fake's waits wrap it.

    ``pause(interval)`` runs between checks; a peer that knows when its state changes passes a wait
    on that change, which returns early, instead of the sleep.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlinePassed(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        pause(min(interval, remaining))


def http_get(url: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to a local port, read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        client.sendall(request)
        received = b""
        try:
            while chunk := client.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received


class AgentProcess:
    """``python -m otel_vmi_hv`` with a clean OTEL_* environment and a free port."""

    def __init__(
        self,
        env: Mapping[str, str],
        args: tuple[str, ...] = ("run",),
        program: tuple[str, ...] = ("-m", "otel_vmi_hv"),
    ) -> None:
        """``program`` is what python runs; another script may start the agent's ``main`` in process."""
        self.port = free_port()
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KUBECONFIG", "NODE_NAME"))
        }
        self.env.update(
            {
                "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
                "OTEL_EXPORTER_PROMETHEUS_PORT": str(self.port),
                "OTEL_METRICS_EXPORTER": "prometheus",
                "OTEL_VMI_HV_NODE_NAME": "test-node",
            }
        )
        self.env.update(env)
        self.args = args
        self.program = program
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AgentProcess:
        self.process = subprocess.Popen(
            [sys.executable, *self.program, *self.args],
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited with {self.process.returncode}:\n{self.output()}")
            try:
                return http_get(f"{self.base_url}/readyz", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout, "/readyz to answer 200")

    def metrics(self) -> str:
        status, body = http_get(f"{self.base_url}/metrics")
        assert status == 200, body
        return body

    def rss_mib(self) -> float:
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def terminate(self, timeout: float = 10.0) -> float:
        """SIGTERM and wait; returns how long the exit took."""
        assert self.process is not None
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"agent ignored SIGTERM for {timeout}s:\n{self.output()}") from None
        return time.monotonic() - started

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def demo_uri(path: Path | None = None) -> str:
    return f"test://{path or ROOT / 'config' / 'demo-node.xml'}"
