"""Every benchmark, one run, one report: `make bench` (or `python -m bench.run [--quick]`)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from importlib.metadata import version

import libvirt

from bench import agent, api_requests, distance_to_limit, exposition, memory, proc_scan
from tests.harness.otlp_receiver import RotelReceiver


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as meminfo:
        ram = int(meminfo.readline().split()[1]) / 2**20
    lib = libvirt.getVersion()
    return (
        f"{cpu}, {os.cpu_count()} cores, {ram:.0f} GiB; Linux {platform.release()}; "
        f"Python {sys.version.split()[0]}; opentelemetry-sdk {version('opentelemetry-sdk')}, "
        f"prometheus_client {version('prometheus_client')}, libvirt {lib // 1_000_000}.{lib // 1000 % 1000}, "
        f"libvirt-python {version('libvirt-python')}, kubernetes {version('kubernetes')}, "
        f"grpcio {version('grpcio')}"
    )


SECTIONS = ("exposition", "distance_to_limit", "agent", "memory", "proc_scan", "api_requests")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and churn, for a smoke run")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma list of sections to run, in their usual order (default: all of {', '.join(SECTIONS)})",
    )
    args = parser.parse_args()
    chosen = set(args.sections.split(","))
    if not chosen <= set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(chosen - set(SECTIONS)))}")
    print(f"machine: {machine()}\n")
    if "exposition" in chosen:
        receiver = RotelReceiver(forward=False).start()  # a real peer; nothing decoded in this process
        try:
            sizes = (110, 250) if args.quick else (110, 250, 1_000, 10_000)
            print(exposition.run(sizes, receiver=receiver), end="\n\n", flush=True)
        finally:
            receiver.stop()
    if "distance_to_limit" in chosen:
        print(distance_to_limit.run((110, 250) if args.quick else (110, 250, 1_000)), end="\n\n", flush=True)
    if "agent" in chosen:
        print(agent.run(churn_total=5_000 if args.quick else 100_000), end="\n\n", flush=True)
    if "memory" in chosen:
        print(memory.run(), end="\n\n", flush=True)
    if "proc_scan" in chosen:
        print(proc_scan.run(repeat=5 if args.quick else 30))
    if "api_requests" in chosen:
        print(api_requests.run(agents=3 if args.quick else 10, scale=600.0 if args.quick else 120.0))


if __name__ == "__main__":
    main()
