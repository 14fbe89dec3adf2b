"""The agent's metrics server (asyncio + h11) against uvicorn (h11 and httptools parsers), hypercorn,
aiohttp's low-level server and the agent's first, threaded server, in the same run.

What it costs (this module): RSS of the bare interpreter, after importing the server and at rest;
RSS per 1,000 idle connections; what a burst of simultaneous connections loses; scrape latency on a
kept-alive connection and on a new one. What it does at its limits (`bench.http_guards`): a
connection cap, a request-header deadline against slow clients, a renewed certificate.

`python -m bench.http_server [--connections 1000] [--burst 200] [--scrapes 300]` prints the tables
(about four minutes on 2 cores; not part of `make bench`). Every server runs in a process of its own
(`bench.server_kinds`), serving the same 60 KB body on 127.0.0.1; ratios are against the agent's.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import resource
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench import http_guards
from bench.common import median, ms, p99, table
from bench.server_kinds import AGENT, KINDS, Served, rss_kib

SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def _settled_rss(pid: int) -> int:
    """RSS once three reads 100 ms apart agree within 1 %."""
    readings = [rss_kib(pid)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.1)
        readings.append(rss_kib(pid))
        last = readings[-3:]
        if len(last) == 3 and max(last) - min(last) <= max(last) // 100:
            break
    return readings[-1]


def _scrape_once(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as warm:
        warm.sendall(SCRAPE)
        while warm.recv(65536):
            pass


def idle_connections(kind: str, connections: int, request_first: bool) -> dict[str, int]:
    """RSS (KiB) of a fresh server: bare, imported, at rest after one scrape, and with
    ``connections`` idle connections (silent, or kept alive after one request)."""
    with Served(kind) as server:
        _scrape_once(server.port)
        rest = _settled_rss(server.pid)
        descriptors = server.descriptors()
        clients: list[socket.socket] = []
        try:
            # From 32 threads: the threaded server's backlog of 5 overflows, and each dropped SYN
            # waits a second for its retransmit; in parallel these waits overlap.
            with ThreadPoolExecutor(32) as pool:
                for client in pool.map(
                    lambda _: socket.create_connection(("127.0.0.1", server.port)), range(connections)
                ):
                    clients.append(client)
                    if request_first:
                        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
            if request_first:
                for client in clients:
                    client.recv(4096)
            accepted = server.accepted(descriptors, connections)
            held = _settled_rss(server.pid)
        finally:
            for client in clients:
                client.close()
        return {
            "bare": server.bare_kib,
            "base": server.base_kib,
            "imported": server.imported_kib,
            "rest": rest,
            "held": held,
            "accepted": accepted,
        }


Measured = dict[str, int]


def _memory_row(
    kind: str, silent: Measured, kept: Measured, agent: tuple[Measured, Measured], connections: int
) -> list[str]:
    def import_cost(measured: Measured, since: str) -> float:
        return (measured["imported"] - measured[since]) / 1024

    def per_connection(measured: Measured) -> float:
        return (measured["held"] - measured["rest"]) / measured["accepted"]

    def per_connection_cell(measured: Measured) -> str:
        held = "" if measured["accepted"] == connections else f" ({measured['accepted']} reached it)"
        return f"{per_connection(measured):.1f}{held}"

    return [
        kind,
        f"{silent['imported'] / 1024:.1f}",
        f"{import_cost(silent, 'bare'):.1f}",
        f"{import_cost(silent, 'base'):.1f}",
        f"{import_cost(silent, 'base') / import_cost(agent[0], 'base'):.2f}x",
        f"{silent['rest'] / 1024:.1f}",
        f"{silent['rest'] / agent[0]['rest']:.2f}x",
        per_connection_cell(silent),
        per_connection_cell(kept),
        f"{per_connection(kept) * 1000 / 1024:.1f}",
        f"{per_connection(kept) / per_connection(agent[1]):.2f}x",
    ]


def run_memory(connections: int = 1000) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < connections * 2 + 100:  # the servers inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, connections * 2 + 100), hard))
    results = {
        kind: (idle_connections(kind, connections, False), idle_connections(kind, connections, True))
        for kind in KINDS
    }
    rows = [
        _memory_row(kind, silent, kept, results[AGENT], connections)
        for kind, (silent, kept) in results.items()
    ]
    bare, base = (
        statistics.median(silent[key] for silent, _ in results.values()) / 1024 for key in ("bare", "base")
    )
    title = (
        f"Resident memory (MiB): after importing the server (bare interpreter {bare:.1f}, with asyncio, ssl, "
        f"logging and gzip {base:.1f}), at rest after one scrape; per idle connection (KiB) with "
        f"{connections:,} opened, divided by those that reached the server"
    )
    headers = [
        "server",
        "imported",
        "import cost",
        "beyond asyncio, ssl, logging",
        "÷agent",
        "at rest",
        "÷agent",
        "KiB/conn silent",
        "KiB/conn keep-alive",
        "MiB per 1,000 keep-alive",
        "÷agent",
    ]
    return title + "\n" + table(headers, rows)


def burst(kind: str, clients: int, timeout: float = 5.0) -> tuple[int, float]:
    """(requests lost, slowest answer in ms) when ``clients`` connect and ask for /healthz at once."""
    with Served(kind) as server:
        barrier = threading.Barrier(clients)

        def one(_: int) -> float | None:
            barrier.wait(10)
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as client:
                    client.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    if not client.recv(64).startswith(b"HTTP/1.1 "):
                        return None
            except OSError:
                return None
            return (time.monotonic() - started) * 1000

        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, range(clients)))
    answered = [r for r in results if r is not None]
    return clients - len(answered), max(answered, default=float("nan"))


def run_burst(clients: int = 200) -> str:
    rows = []
    for kind in KINDS:
        lost, slowest = burst(kind, clients)
        rows.append([kind, clients, lost, f"{slowest:.0f}"])
    title = f"{clients} clients connecting and asking at the same instant"
    return (
        title
        + "\n"
        + table(["server", "clients", "lost (no answer within 5 s)", "slowest answer (ms)"], rows)
    )


class _Scraper:
    """GET /metrics of the 60 KB body, read in full, on one kept-alive connection or a new one."""

    def __init__(self, kind: str, port: int) -> None:
        self.kind, self.port = kind, port
        self.kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.samples: dict[bool, list[float]] = {True: [], False: []}

    def scrape(self, keep_alive: bool) -> float:
        connection = (
            self.kept if keep_alive else http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        )
        started = time.perf_counter()
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        if not keep_alive:
            connection.close()
        assert response.status == 200, f"{self.kind}: {response.status}"
        return elapsed


def run_latency(repeat: int = 300, warmup: int = 20) -> str:
    """All servers run at once and are scraped in turn, round after round, so that what else the
    machine does in the meantime falls on all of them alike."""
    with contextlib.ExitStack() as stack:
        scrapers = [_Scraper(kind, stack.enter_context(Served(kind)).port) for kind in KINDS]
        for scraper in scrapers:
            stack.callback(scraper.kept.close)
        for round_ in range(warmup + repeat):
            for scraper in scrapers:
                for keep_alive in (True, False):
                    elapsed = scraper.scrape(keep_alive)
                    if round_ >= warmup:
                        scraper.samples[keep_alive].append(elapsed)
    agent = next(scraper for scraper in scrapers if scraper.kind == AGENT)
    rows = []
    for scraper in scrapers:
        row = [scraper.kind]
        for keep_alive in (True, False):
            samples = scraper.samples[keep_alive]
            ratio = median(samples) / median(agent.samples[keep_alive])
            row += [ms(median(samples)), ms(p99(samples)), f"{ratio:.2f}x"]
        rows.append(row)
    title = (
        f"Scrape of the 60 KB body over loopback, {repeat} each, the servers in turn (ms; ÷agent: of the "
        "medians)"
    )
    headers = ["server", "keep-alive median", "p99", "÷agent", "new connection median", "p99", "÷agent"]
    return title + "\n" + table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=300)
    args = parser.parse_args()
    print(run_memory(args.connections), end="\n\n", flush=True)
    print(run_burst(args.burst), end="\n\n", flush=True)
    print(run_latency(args.scrapes), end="\n\n", flush=True)
    print(http_guards.run(), flush=True)


if __name__ == "__main__":
    main()
