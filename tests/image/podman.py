"""Runs the built image with podman and observes the container from the host, as an operator would.

Why from the host: what must be proven (the uid, the capabilities, no_new_privs, the read-only root)
is what the kernel applies to the container's process, so it is read from /proc/<pid>/status of that
process rather than trusted from podman's configuration.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from tests.peers import require

PODMAN_TIMEOUT: Final = 60.0


def podman(
    *args: str, timeout: float = PODMAN_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one podman command; on failure the assertion shows its output."""
    result = subprocess.run(
        [require("podman"), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


@dataclass(frozen=True)
class ProcessStatus:
    """The kernel's view of the container's main process (/proc/<pid>/status on the host)."""

    uid: int
    effective_capabilities: int
    no_new_privs: bool
    rss_bytes: int


def process_status(pid: int) -> ProcessStatus:
    fields = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    rss_kib = int(fields["VmRSS"].split()[0])
    return ProcessStatus(
        uid=int(fields["Uid"].split()[1]),  # real, effective, saved, fs: the effective one
        effective_capabilities=int(fields["CapEff"], 16),
        no_new_privs=fields["NoNewPrivs"] == "1",
        rss_bytes=rss_kib * 1024,
    )


class Container:
    """One detached container, removed (with everything it ran) when the ``with`` block ends."""

    def __init__(self, image: str, run_args: Sequence[str], command: Sequence[str] = ()) -> None:
        self.image = image
        self.run_args = list(run_args)
        self.command = list(command)
        self.id = ""

    def __enter__(self) -> Container:
        result = podman("run", "-d", *self.run_args, self.image, *self.command)
        self.id = result.stdout.strip().splitlines()[-1]
        return self

    def __exit__(self, *exc: object) -> None:
        podman("rm", "-f", "-t", "0", self.id, check=False)

    def inspect(self) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(podman("inspect", self.id).stdout)
        return data[0]

    @property
    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    @property
    def pid(self) -> int:
        """Host pid of the container's main process (the agent: the image's exec-form entrypoint)."""
        pid = int(self.inspect()["State"]["Pid"])
        assert pid > 0, f"container {self.id[:12]} is not running:\n{self.logs()}"
        return pid

    def logs(self) -> str:
        result = podman("logs", self.id, check=False)
        return result.stdout + result.stderr

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside the container, with the container's user and capabilities."""
        return podman("exec", self.id, *command, check=False)

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """Send SIGTERM, as the kubelet does, and return (exit status, seconds until it exited)."""
        started = time.monotonic()
        podman("kill", "--signal", "TERM", self.id)
        result = podman("wait", self.id, timeout=timeout)
        elapsed = time.monotonic() - started
        return int(result.stdout.strip().splitlines()[-1]), elapsed


def image_size(image: str) -> int:
    """Bytes of the image as stored (all its layers, uncompressed)."""
    data: list[dict[str, Any]] = json.loads(podman("image", "inspect", image).stdout)
    return int(data[0]["Size"])
