"""The agent's metrics server (asyncio + h11) against the previous design (the standard library's
ThreadingHTTPServer, one thread per connection, listen backlog 5) and aiohttp's low-level server
(installed anyway, as a dependency of the kubernetes client), in the same run: RSS at rest and per
1,000 idle connections, and what a burst of simultaneous connections loses.

`python -m bench.http_server [--connections 1000] [--burst 200]` prints two Markdown tables. Each
server runs in a process of its own, serving a 60 KB body; RSS is read from /proc once settled.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b'metric_with_a_long_name_for_realism{label="value"} 1\n' * 1200
KINDS = ("stdlib-threading", "aiohttp", "agent-h11")


def serve(kind: str) -> None:
    """Run one server on a free port, print the port, serve until killed."""
    if kind == "aiohttp":
        import asyncio

        from aiohttp import web

        async def handle(request: web.BaseRequest) -> web.Response:
            return web.Response(body=BODY)

        async def main() -> None:
            server = await asyncio.get_running_loop().create_server(
                web.Server(handle, access_log=None), "127.0.0.1", 0, backlog=1024
            )
            print(server.sockets[0].getsockname()[1], flush=True)
            await asyncio.Event().wait()

        asyncio.run(main())
    elif kind == "agent-h11":
        from otel_vmi_hv.server import HttpServer, Readiness, ServerLimits

        limits = ServerLimits(max_connections=100_000, read_header_timeout=600, idle_timeout=600)
        server = HttpServer("127.0.0.1", 0, lambda: BODY, Readiness(), limits=limits)
        server.start()
        print(server.port, flush=True)
    else:

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        stdlib = Server(("127.0.0.1", 0), Handler)
        print(stdlib.server_address[1], flush=True)
        stdlib.serve_forever()
    while True:
        time.sleep(3600)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _settled_rss(pid: int) -> int:
    """RSS once three reads 100 ms apart agree within 1 %."""
    readings = [_rss_kib(pid)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.1)
        readings.append(_rss_kib(pid))
        last = readings[-3:]
        if len(last) == 3 and max(last) - min(last) <= max(last) // 100:
            break
    return readings[-1]


def measure(kind: str, connections: int, request_first: bool) -> tuple[int, int]:
    """(RSS before, RSS with ``connections`` idle connections), KiB."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.http_server", "--serve", kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the stdlib server prints a traceback per client that hangs up
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        warm = socket.create_connection(("127.0.0.1", port))
        warm.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        while warm.recv(65536):
            pass
        warm.close()
        before = _settled_rss(process.pid)
        clients = []
        for _ in range(connections):
            client = socket.create_connection(("127.0.0.1", port))
            if request_first:
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
            clients.append(client)
        if request_first:
            for client in clients:
                client.recv(4096)
        after = _settled_rss(process.pid)
        for client in clients:
            client.close()
        return before, after
    finally:
        process.kill()
        process.wait()


def burst(kind: str, clients: int, timeout: float = 5.0) -> tuple[int, float]:
    """(requests lost, slowest answer in ms) when ``clients`` connect and ask for /healthz at once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    process = subprocess.Popen(
        [sys.executable, "-m", "bench.http_server", "--serve", kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        barrier = threading.Barrier(clients)

        def one(_: int) -> float | None:
            barrier.wait(10)
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
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
    finally:
        process.kill()
        process.wait()


def run_burst(clients: int = 200) -> str:
    lines = [
        "| server | simultaneous clients | lost (no answer within 5 s) | slowest answer (ms) |",
        "|---|---|---|---|",
    ]
    for kind in KINDS:
        lost, slowest = burst(kind, clients)
        lines.append(f"| {kind} | {clients} | {lost} | {slowest:.0f} |")
    return "\n".join(lines)


def run(connections: int = 1000) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < connections * 2 + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, connections * 2 + 100), hard))
    lines = [
        f"| server | connections | state | RSS before (MiB) | RSS after (MiB) | KiB per connection "
        f"| MiB per 1,000 | vs {KINDS[0]} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for request_first, state in ((False, "connected, silent"), (True, "keep-alive after one request")):
        baseline: float | None = None
        for kind in KINDS:
            before, after = measure(kind, connections, request_first)
            per = (after - before) / connections
            baseline = per if baseline is None else baseline
            lines.append(
                f"| {kind} | {connections} | {state} | {before / 1024:.1f} | {after / 1024:.1f} | {per:.1f} "
                f"| {per * 1000 / 1024:.1f} | {per / baseline:.2f}x |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    print(f"pid {os.getpid()}: {args.connections} idle connections per server\n")
    print(run(args.connections))
    print()
    print(run_burst(args.burst))


if __name__ == "__main__":
    main()
