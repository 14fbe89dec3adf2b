"""How far the agent's unchanged scrape is from the limit: `python -m bench.distance_to_limit`.

Three servers answer a Prometheus 3 scrape (OpenMetrics, gzip) of the same VMIs: the agent (its
Telemetry and HTTP server, the answer cached), the hand-written prometheus_client exporter (B) and a
bare asyncio server that writes the agent's answer, prepared once, with no parsing beyond finding the
end of the request head: the floor for a Python server. The client is ApacheBench (`ab`, Debian's
apache2-utils), a C program that opens a new connection per request, as Prometheus does when a
scrape's connection was closed, so the client's own cost is small and the same for all three.
Rounds alternate the servers so that load from elsewhere falls on each alike.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from bench.common import table
from bench.exposition import (
    PROMETHEUS_3_HEADERS,
    AgentSide,
    PlainCollector,
    agent_server,
    make_rows,
    prometheus_client_server,
)

SIZES = (110, 250, 1_000)
REQUESTS = 400  # per ab run
ROUNDS = 5
HEADERS = tuple(f"{name}: {value}" for name, value in PROMETHEUS_3_HEADERS.items())


@contextmanager
def bare_asyncio_server(answer: bytes) -> Iterator[int]:
    """Answers every request on a connection with ``answer`` (a whole HTTP response) and closes."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    stop = asyncio.Event()

    async def serve() -> None:
        nonlocal port
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
        port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await stop.wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)


def response_of(port: int) -> bytes:
    """The agent's whole HTTP answer to a Prometheus 3 scrape, as bytes on the wire."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/metrics", headers=dict(h.split(": ", 1) for h in HEADERS))
        response = connection.getresponse()
        body = response.read()
        head = f"HTTP/1.1 {response.status} {response.reason}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in response.getheaders() if k.lower() != "connection")
        head += "connection: close\r\n\r\n"
        return head.encode("latin-1") + body
    finally:
        connection.close()


def ab_mean_ms(port: int) -> float:
    """Mean milliseconds per request over one ab run (a new connection per request)."""
    command = ["ab", "-q", "-n", str(REQUESTS), "-c", "1"]
    for header in HEADERS:
        command += ["-H", header]
    output = subprocess.run(
        [*command, f"http://127.0.0.1:{port}/metrics"], check=True, capture_output=True, text=True
    ).stdout
    # A body's length differs between answers (the process metrics change): only a failed
    # connection, read or exception is a failure.
    failed = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)\)", output)
    if failed is not None and any(int(count) for count in failed.groups()):
        raise RuntimeError(f"ab reported failures:\n{output}")
    match = re.search(r"Time per request:\s+([\d.]+) \[ms\] \(mean\)", output)
    assert match is not None, output
    return float(match.group(1))


def run(sizes: tuple[int, ...] = SIZES) -> str:
    if shutil.which("ab") is None:
        sys.exit("ab not found: install Debian's apache2-utils (scripts/install-system-deps.sh test)")
    rows = []
    for n in sizes:
        rows_n = make_rows(n)
        plain, agent = PlainCollector(rows_n), AgentSide(rows_n)
        with ExitStack() as servers:
            servers.callback(agent.telemetry.shutdown, 2)
            agent_port = servers.enter_context(
                agent_server(agent.telemetry.scrape, agent.telemetry.scrape_cached)
            )
            answer = response_of(agent_port)
            ports = {
                "B prometheus_client's own server": servers.enter_context(
                    prometheus_client_server(plain.registry)
                ),
                "agent, unchanged": agent_port,
                "bare asyncio, the agent's bytes": servers.enter_context(bare_asyncio_server(answer)),
            }
            samples: dict[str, list[float]] = {name: [] for name in ports}
            names = list(ports)
            for round_ in range(ROUNDS):
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    samples[name].append(ab_mean_ms(ports[name]))
        b = statistics.median(samples["B prometheus_client's own server"])
        floor = statistics.median(samples["bare asyncio, the agent's bytes"])
        for name, values in samples.items():
            m = statistics.median(values)
            rows.append([n, name, f"{m:.3f}", f"{m / b:.3f}", f"{m / floor:.2f}"])
    return (
        "/metrics, Prometheus 3's request (OpenMetrics, gzip), a new connection per request, timed by ab "
        f"(median over {ROUNDS} runs of {REQUESTS} requests of the mean ms per request)\n"
        + table(["N", "server", "ms", "÷B", "÷bare"], rows)
    )


if __name__ == "__main__":
    print(run())
