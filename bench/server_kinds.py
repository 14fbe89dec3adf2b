"""The HTTP servers the metrics server is compared with, each run in a process of its own.

`Served(kind, options)` starts `python -m bench.server_kinds KIND OPTIONS`; the child reads its own
RSS before importing anything of its server (the bare interpreter, plus the few standard modules this
file needs), again with the standard modules every asyncio server in the agent needs (asyncio, ssl,
logging, gzip), and once the server's own modules are imported; then it serves the same fixed 60 KB
/metrics body on a free 127.0.0.1 port and prints one JSON line: the port and the three readings.

Each server gets the knobs an operator would use to mirror the agent's limits, where it has them
(`Options`): a connection cap, a request-header deadline and an idle keep-alive deadline, and a
certificate and key file for TLS. Which knob stands for which is in `KNOBS`, shown in the tables.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

BODY = b'metric_with_a_long_name_for_realism{label="value"} 1\n' * 1200
KINDS = ("agent-h11", "uvicorn-h11", "uvicorn-httptools", "hypercorn", "aiohttp", "stdlib-threading")
AGENT = KINDS[0]
# What stands, in each server, for the agent's cap / header deadline / idle deadline ("none": no such knob).
KNOBS = {
    "agent-h11": ("max_connections", "read_header_timeout", "idle_timeout"),
    "uvicorn-h11": ("limit_concurrency", "none", "timeout_keep_alive"),
    "uvicorn-httptools": ("limit_concurrency", "none", "timeout_keep_alive"),
    "hypercorn": ("none", "read_timeout (per read)", "keep_alive_timeout"),
    "aiohttp": ("none", "none", "keepalive_timeout"),
    "stdlib-threading": ("none", "none", "none"),
}
# A deadline long enough never to fire during a measurement that does not look at it.
NEVER = 600.0


@dataclass(frozen=True)
class Options:
    cap: int | None = None  # connections
    header_timeout: float = NEVER  # seconds for a request's line and headers
    idle_timeout: float = NEVER  # seconds between keep-alive requests
    cert_file: str | None = None
    key_file: str | None = None


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


class Served:
    """One server in a child process, killed on exit; ``port``, ``pid``, and the child's RSS (KiB)
    before any import (``bare_kib``), with the standard asyncio modules (``base_kib``) and with its
    server's (``imported_kib``)."""

    def __init__(self, kind: str, options: Options = Options()) -> None:
        self.kind = kind
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.server_kinds", kind, json.dumps(asdict(options))],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # tracebacks for clients that hang up (stdlib), access logs
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self._process.wait()
            raise RuntimeError(f"{kind} did not start (exit status {self._process.returncode})")
        started = json.loads(line)
        self.pid = self._process.pid
        self.port: int = started["port"]
        self.bare_kib: int = started["bare_kib"]
        self.base_kib: int = started["base_kib"]
        self.imported_kib: int = started["imported_kib"]

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def accepted(self, before: int, connections: int, bound: float = 30.0) -> int:
        """How many of ``connections`` just opened the server holds (descriptors beyond ``before``),
        once all are or the count stopped growing for 2 s. A connect returns once the kernel queued
        the connection, before the server accepted it; and where the accept queue overflowed (the
        threaded server's backlog of 5), a silent client's connection can look open to it without
        ever reaching the server."""
        deadline = time.monotonic() + bound
        last, since = -1, time.monotonic()
        while (held := self.descriptors() - before) < connections and time.monotonic() < deadline:
            if held != last:
                last, since = held, time.monotonic()
            elif time.monotonic() - since > 2.0:
                break
            time.sleep(0.1)
        return min(held, connections)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *_: object) -> None:
        self._process.kill()
        self._process.wait()


# ---------------------------------------------------------------------------------- the child side


def _listener() -> socket.socket:
    """A listening socket handed to servers that cannot say which port they bound. IPPROTO_TCP as
    getaddrinfo would give it, the way the servers bind their own: asyncio sets TCP_NODELAY only on
    sockets whose protocol says TCP (with 0, a keep-alive answer in two writes waits 40 ms for the
    client's delayed ACK)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def _announce(port: int, before: tuple[int, int], imported: int) -> None:
    """``before``: RSS before any import, and with the asyncio base (`_import_asyncio_base`)."""
    started = {"port": port, "bare_kib": before[0], "base_kib": before[1], "imported_kib": imported}
    print(json.dumps(started), flush=True)


async def _asgi_app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
    """The smallest ASGI application serving BODY (and lifespan, which hypercorn always runs)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    headers = [(b"content-type", b"text/plain; version=0.0.4"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def _serve_agent(options: Options, before: tuple[int, int]) -> None:
    from otel_vmi_hv.export.exposition import TEXT_CONTENT_TYPE, Scrape
    from otel_vmi_hv.server import HttpServer, Readiness, ServerLimits, tls_context

    imported = rss_kib()
    limits = ServerLimits(
        max_connections=options.cap or 1_000_000,
        read_header_timeout=options.header_timeout,
        idle_timeout=options.idle_timeout,
    )
    tls = (
        tls_context(options.cert_file, options.key_file, None)
        if options.cert_file and options.key_file
        else None
    )
    answer = Scrape(BODY, TEXT_CONTENT_TYPE, None)
    server = HttpServer(
        "127.0.0.1", 0, lambda _accept, _encoding: answer, Readiness(), tls=tls, limits=limits
    )
    server.start()
    _announce(server.port, before, imported)
    while True:
        time.sleep(3600)


def _serve_uvicorn(parser: str, options: Options, before: tuple[int, int]) -> None:
    import asyncio

    import uvicorn

    config = uvicorn.Config(
        _asgi_app,
        http=parser,
        loop="asyncio",
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="critical",
        limit_concurrency=options.cap,
        timeout_keep_alive=int(options.idle_timeout),
        ssl_certfile=options.cert_file,
        ssl_keyfile=options.key_file,
    )
    server = uvicorn.Server(config)
    config.load()  # imports the protocol classes, so they count as imported, not as at rest
    imported = rss_kib()
    sock = _listener()
    _announce(sock.getsockname()[1], before, imported)
    asyncio.run(server.serve(sockets=[sock]))


def _serve_hypercorn(options: Options, before: tuple[int, int]) -> None:
    import asyncio

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    imported = rss_kib()
    sock = _listener()
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = options.idle_timeout
    # Its only per-connection read deadline; it also bounds the idle gap between keep-alive requests.
    config.read_timeout = None if options.header_timeout >= NEVER else int(options.header_timeout)
    config.certfile, config.keyfile = options.cert_file, options.key_file
    _announce(sock.getsockname()[1], before, imported)
    asyncio.run(serve(_asgi_app, config, mode="asgi"))  # type: ignore[arg-type]


def _tls_context(options: Options) -> Any:
    if not (options.cert_file and options.key_file):
        return None
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(options.cert_file, options.key_file)
    return context


def _serve_aiohttp(options: Options, before: tuple[int, int]) -> None:
    import asyncio

    from aiohttp import web

    imported = rss_kib()

    async def handle(request: web.BaseRequest) -> web.Response:
        return web.Response(body=BODY)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            web.Server(handle, access_log=None, keepalive_timeout=options.idle_timeout),
            sock=_listener(),
            ssl=_tls_context(options),
        )
        _announce(server.sockets[0].getsockname()[1], before, imported)
        await asyncio.Event().wait()

    asyncio.run(main())


def _serve_stdlib(options: Options, before: tuple[int, int]) -> None:
    """The agent's first design: a thread per connection, listen backlog 5."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    imported = rss_kib()

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

    server = Server(("127.0.0.1", 0), Handler)
    context = _tls_context(options)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    _announce(server.server_address[1], before, imported)
    server.serve_forever()


def _import_asyncio_base() -> int:
    """The standard modules any asyncio server in the agent loads (the agent needs them anyway):
    what each server imports beyond them is its own cost."""
    import asyncio
    import concurrent.futures
    import email.utils
    import gzip
    import http
    import logging
    import ssl

    del asyncio, concurrent, email, gzip, http, logging, ssl
    return rss_kib()


def serve(kind: str, options: Options) -> None:
    bare = rss_kib()
    base = _import_asyncio_base()
    if kind == "agent-h11":
        _serve_agent(options, (bare, base))
    elif kind.startswith("uvicorn-"):
        _serve_uvicorn(kind.removeprefix("uvicorn-"), options, (bare, base))
    elif kind == "hypercorn":
        _serve_hypercorn(options, (bare, base))
    elif kind == "aiohttp":
        _serve_aiohttp(options, (bare, base))
    elif kind == "stdlib-threading":
        _serve_stdlib(options, (bare, base))
    else:
        raise SystemExit(f"unknown server kind {kind!r}; one of {', '.join(KINDS)}")


if __name__ == "__main__":
    serve(sys.argv[1], Options(**json.loads(sys.argv[2])))
    os._exit(0)
