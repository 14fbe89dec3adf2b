"""Fake /proc trees written from a compact description (``tests/fixtures/proc/*.yaml``).

Why files and not mocks: the detector reads a directory tree, so the fake is a directory tree with
the files the kernel would show (``comm`` with its newline, NUL-separated ``cmdline``, ``cgroup``,
``task/<tid>/comm``, ``stat``), and the code under test runs unchanged against it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "proc"


@dataclass(frozen=True)
class FakeProcess:
    """One process: its main thread is named ``comm``; ``threads`` are the names of the others."""

    pid: int
    comm: str
    cmdline: tuple[str, ...] = ()
    cgroup: str = "0::/\n"
    threads: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FakeProcess:
        cgroup = raw.get("cgroup", "0::/\n")
        return cls(
            pid=int(raw["pid"]),
            comm=str(raw["comm"]),
            cmdline=tuple(str(a) for a in raw.get("cmdline", ())),
            cgroup=cgroup if cgroup.endswith("\n") else cgroup + "\n",
            threads=tuple(str(t) for t in raw.get("threads", ())),
        )


@dataclass(frozen=True)
class Query:
    """What the detector should answer for one domain (and pod), as a user would read it."""

    domain: str
    pod_uid: str | None
    hypervisor_type: str
    error: str | None  # None: an answer


@dataclass(frozen=True)
class Case:
    name: str
    about: str
    processes: tuple[FakeProcess, ...]
    queries: tuple[Query, ...]
    mountinfo: str | None = None  # a mountinfo text; "{root}" stands for the tree's path
    hide_init: bool = False  # leave pid 1 out, as hidepid=invisible does for other users
    extra: dict[str, Any] = field(default_factory=dict)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_process(root: Path, process: FakeProcess) -> None:
    """Write one process's files under ``root/<pid>`` (tids follow the pid)."""
    base = root / str(process.pid)
    comm = process.comm.encode()[:15] + b"\n"  # the kernel's TASK_COMM_LEN is 16 with the NUL
    _write(base / "comm", comm)
    _write(base / "cmdline", b"".join(os.fsencode(a) + b"\0" for a in process.cmdline))
    _write(base / "cgroup", process.cgroup.encode())
    _write(base / "stat", f"{process.pid} ({process.comm[:15]}) S 1 {process.pid} 0\n".encode())
    names = (process.comm, *process.threads)
    for offset, name in enumerate(names):
        _write(base / "task" / str(process.pid + offset) / "comm", name.encode()[:15] + b"\n")


def write_proc_tree(root: Path, processes: Iterable[FakeProcess], *, with_init: bool = True) -> Path:
    """Write a /proc-like tree at ``root``: pid 1 (unless hidden), non-pid entries, ``processes``."""
    root.mkdir(parents=True, exist_ok=True)
    if with_init:
        write_process(root, FakeProcess(1, "systemd", ("/sbin/init",)))
    _write(root / "meminfo", b"MemTotal: 1 kB\n")
    (root / "sys").mkdir(exist_ok=True)
    for process in processes:
        write_process(root, process)
    return root


def load_cases(path: Path = FIXTURES / "cases.yaml") -> list[Case]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    cases = []
    for item in raw["cases"]:
        queries = tuple(
            Query(
                domain=str(q["domain"]),
                pod_uid=q.get("pod_uid"),
                hypervisor_type=str(q.get("hypervisor_type", "unknown")),
                error=q.get("error"),
            )
            for q in item["queries"]
        )
        cases.append(
            Case(
                name=str(item["name"]),
                about=str(item.get("about", "")),
                processes=tuple(FakeProcess.from_dict(p) for p in item["processes"]),
                queries=queries,
                mountinfo=item.get("mountinfo"),
                hide_init=bool(item.get("hide_init", False)),
            )
        )
    return cases


def build_case(root: Path, case: Case) -> tuple[Path, Path]:
    """Write ``case`` under ``root``; return (proc root, mountinfo path)."""
    proc = write_proc_tree(root / "proc", case.processes, with_init=not case.hide_init)
    mountinfo = root / "mountinfo"
    text = (case.mountinfo or "").replace("{root}", str(proc.resolve()))
    mountinfo.write_text(text, encoding="utf-8")
    return proc, mountinfo
