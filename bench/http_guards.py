"""What each server does at the limits an exposed metrics port needs: a connection cap, a deadline
for request headers (slow clients), and a certificate renewed on disk while it runs.

Each server gets the closest knobs it has to the agent's (`bench.server_kinds.KNOBS`), set to the same
values, shorter than the agent's defaults (10 s headers, 30 s idle) so that a run stays short. Nothing
is assumed from documentation: every cell is what a client on 127.0.0.1 saw. Printed by
`python -m bench.http_server`, or alone by `python -m bench.http_guards`.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import table
from bench.server_kinds import KINDS, KNOBS, Options, Served

CAP = 50
BEYOND = 10
HEADER_TIMEOUT = 2.0
IDLE_TIMEOUT = 5.0
BOUND = 15.0  # how long a slow client is watched; "open" past it means no deadline fired
SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n"


def _limits(cap: int | None = CAP) -> Options:
    return Options(cap=cap, header_timeout=HEADER_TIMEOUT, idle_timeout=IDLE_TIMEOUT)


# ------------------------------------------------------------------------------------ one exchange


def _status(sock: socket.socket, timeout: float = 5.0) -> str:
    """Read one response in full: its status code, "closed" if the server hung up without one,
    "no answer" if nothing came within ``timeout``."""
    sock.settimeout(timeout)
    received = b""
    try:
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                return "closed" if not received else received[9:12].decode()
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except TimeoutError:
        return "no answer"
    except OSError:
        return "closed"
    return head[9:12].decode()


def _scrape(port: int) -> tuple[socket.socket | None, str]:
    """A new connection and one scrape on it; the connection is left open (keep-alive)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(SCRAPE)
    except OSError:
        return None, "closed"
    return sock, _status(sock)


# ------------------------------------------------------------------------------------ the cap


def connection_cap(kind: str) -> list[str]:
    """CAP scrapers keep their connections open, then BEYOND more scrape; then CAP silent
    connections (no request at all) are held and one scraper keeps trying."""
    with Served(kind, _limits()) as server:
        held: list[socket.socket] = []
        try:
            first = Counter[str]()
            for _ in range(CAP):
                sock, status = _scrape(server.port)
                first[status] += 1
                if sock is not None:
                    held.append(sock)
            beyond = Counter[str]()
            for _ in range(BEYOND):
                sock, status = _scrape(server.port)
                beyond[status] += 1
                if sock is not None:
                    held.append(sock)
        finally:
            for sock in held:
                sock.close()
    with Served(kind, _limits()) as server:
        descriptors = server.descriptors()
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(CAP)]
        try:
            server.accepted(descriptors, CAP)
            sock, status = _scrape(server.port)
            if sock is not None:
                sock.close()
            lockout = _until(lambda: _scrape_status(server.port) == "200", BOUND)
        finally:
            for sock in silent:
                sock.close()
    return [
        kind,
        KNOBS[kind][0],
        _counts(first),
        _counts(beyond),
        status,
        "at once"
        if lockout == 0
        else (f"after {lockout:.1f} s" if lockout is not None else f"not in {BOUND:.0f} s"),
    ]


def _scrape_status(port: int) -> str:
    sock, status = _scrape(port)
    if sock is not None:
        sock.close()
    return status


def _until(condition: Callable[[], bool], bound: float, interval: float = 0.25) -> float | None:
    """Seconds until ``condition`` held (0 if at once), None if not within ``bound``."""
    started = time.monotonic()
    while True:
        if condition():
            elapsed = time.monotonic() - started
            return 0.0 if elapsed < interval else elapsed
        if time.monotonic() - started > bound:
            return None
        time.sleep(interval)


def _counts(outcomes: Counter[str]) -> str:
    return ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))


def run_cap() -> str:
    rows = [connection_cap(kind) for kind in KINDS]
    title = (
        f"Connection cap of {CAP}: {CAP} scrapers keep their connections, {BEYOND} more scrape; then {CAP} "
        f"silent connections are held and a scraper tries every 0.25 s (header deadline "
        f"{HEADER_TIMEOUT:.0f} s where there is one)"
    )
    headers = [
        "server",
        "cap knob",
        f"the first {CAP}",
        f"the {BEYOND} beyond",
        f"a scrape beside {CAP} silent connections",
        "a scrape answered 200",
    ]
    return title + "\n" + table(headers, rows)


# ------------------------------------------------------------------------------------ slow clients


def _watch(sock: socket.socket, trickle: bytes = b"") -> str:
    """Until the server hangs up or BOUND passes, sending one byte of ``trickle`` a second: how
    long the connection stayed open and what the server said before closing."""
    started = time.monotonic()
    said = b""
    while (elapsed := time.monotonic() - started) < BOUND:
        if trickle:
            try:
                sock.send(trickle[:1])
            except OSError:
                return _dropped(elapsed, said)
            trickle = trickle[1:] or trickle
        readable, _, _ = select.select([sock], [], [], 1.0)
        if readable:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return _dropped(time.monotonic() - started, said)
            if not chunk:
                return _dropped(time.monotonic() - started, said)
            said += chunk
    return f"open at {BOUND:.0f} s"


def _dropped(elapsed: float, said: bytes) -> str:
    answer = f", {said[9:12].decode()} sent" if said.startswith(b"HTTP/") else ""
    return f"closed at {elapsed:.1f} s{answer}"


def _silent(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        return _watch(sock)


def _half_request_line(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /metr")
        return _watch(sock)


def _trickle(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
        return _watch(sock, trickle=b"a")


def _idle_after_scrape(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(SCRAPE)
        if _status(sock) != "200":
            return "scrape failed"
        return _watch(sock)


SLOW_CLIENTS: dict[str, Callable[[int], str]] = {
    "connected, silent": _silent,
    "half a request line, then nothing": _half_request_line,
    "headers, one byte a second": _trickle,
    "kept alive after a scrape (idle)": _idle_after_scrape,
}


# Hypercorn's read_timeout looks like a header deadline; with it below keep_alive_timeout, this row
# shows whether it closes anything.
HYPERCORN_READ_TIMEOUT = (
    "hypercorn, read_timeout 2 s, keep_alive_timeout 30 s",
    Options(header_timeout=2, idle_timeout=30),
)


def slow_clients(kind: str, options: Options | None = None) -> list[str]:
    """All four slow clients at once against one server: how long each kept its connection."""
    with Served(kind, options or _limits(cap=None)) as server, ThreadPoolExecutor(len(SLOW_CLIENTS)) as pool:
        return list(pool.map(lambda client: client(server.port), SLOW_CLIENTS.values()))


def run_slow_clients() -> str:
    cases: list[tuple[str, str, str, Options | None]] = [
        (kind, f"{KNOBS[kind][1]} / {KNOBS[kind][2]}", kind, None) for kind in KINDS
    ]
    label, options = HYPERCORN_READ_TIMEOUT
    cases.append((label, f"{KNOBS['hypercorn'][1]} / {KNOBS['hypercorn'][2]}", "hypercorn", options))
    with ThreadPoolExecutor(len(cases)) as pool:  # BOUND seconds in all, not per server
        results = list(pool.map(lambda case: slow_clients(case[2], case[3]), cases))
    rows = [[label, knobs, *result] for (label, knobs, _, _), result in zip(cases, results, strict=True)]
    title = (
        f"Slow clients: when the server hangs up (header deadline {HEADER_TIMEOUT:.0f} s and idle deadline "
        f"{IDLE_TIMEOUT:.0f} s where the server has such knobs; watched for {BOUND:.0f} s)"
    )
    return title + "\n" + table(["server", "header / idle knob", *SLOW_CLIENTS], rows)


# ------------------------------------------------------------------------------------ certificates


def _issue(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _served_certificate(port: int) -> bytes | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(SCRAPE)
            return tls.getpeercert(binary_form=True) if _status(tls) == "200" else None
    except OSError:
        return None


def certificate_reload(kind: str, directory: Path) -> list[str]:
    """Serve ``first``, replace the files with ``renewed`` (key first, each by an atomic rename, as a
    secret volume's symlink swap), then connect every 0.25 s: when is ``renewed`` served?"""
    first_cert, first_key = _issue(directory, "first")
    renewed_cert, renewed_key = _issue(directory, "renewed")
    served_cert, served_key = directory / "tls.crt", directory / "tls.key"
    shutil.copy(first_cert, served_cert)
    shutil.copy(first_key, served_key)
    options = Options(cert_file=str(served_cert), key_file=str(served_key))
    renewed = ssl.PEM_cert_to_DER_cert(renewed_cert.read_text())
    with Served(kind, options) as server:
        before = _served_certificate(server.port)
        if before != ssl.PEM_cert_to_DER_cert(first_cert.read_text()):
            return [kind, "TLS did not answer", "-"]
        for source, target in ((renewed_key, served_key), (renewed_cert, served_cert)):
            shutil.copy(source, directory / "incoming")
            os.replace(directory / "incoming", target)
        failed = 0

        def renewed_served() -> bool:
            nonlocal failed
            served = _served_certificate(server.port)
            failed += served is None
            return served == renewed

        after = _until(renewed_served, 10.0)
    shown = f"after {after:.1f} s" if after is not None else "never (old certificate still served at 10 s)"
    return [kind, shown, str(failed)]


def run_certificates() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as root:
        directories = [Path(root) / kind for kind in KINDS]
        for directory in directories:
            directory.mkdir()
        with ThreadPoolExecutor(len(KINDS)) as pool:
            rows = list(pool.map(certificate_reload, KINDS, directories))
    title = "Certificate renewed on disk while serving: new TLS connections every 0.25 s for 10 s"
    return (
        title + "\n" + table(["server", "renewed certificate served", "failed handshakes or scrapes"], rows)
    )


def run() -> str:
    return "\n\n".join((run_cap(), run_slow_clients(), run_certificates()))


if __name__ == "__main__":
    print(run())
