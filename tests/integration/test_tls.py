"""HTTPS on the metrics port, optionally with client certificates (mutual TLS)."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agent_process import AgentProcess, demo_uri, wait_until


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _issue(
    directory: Path, name: str, ca: Path | None, ca_key: Path | None, san: str | None = None
) -> tuple[Path, Path]:
    """A P-256 key and certificate: self-signed (a CA) when ``ca`` is None, else signed by it."""
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    new_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key))
    subject = ("-subj", f"/CN={name}")
    if ca is None:
        _openssl("req", "-x509", *new_key, "-out", str(cert), "-days", "2", *subject)
        return cert, key
    assert ca_key is not None
    csr = directory / f"{name}.csr"
    _openssl("req", "-new", *new_key, "-out", str(csr), *subject)
    extensions = directory / f"{name}.ext"
    extensions.write_text(f"subjectAltName={san}\n" if san else "extendedKeyUsage=clientAuth\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(extensions),
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = _issue(d, "test-ca", None, None)
    server_cert, server_key = _issue(d, "server", ca, ca_key, san="IP:127.0.0.1,DNS:localhost")
    client_cert, client_key = _issue(d, "scraper", ca, ca_key)
    rogue_ca, rogue_ca_key = _issue(d, "rogue-ca", None, None)
    rogue_cert, rogue_key = _issue(d, "rogue", rogue_ca, rogue_ca_key)
    return Pki(ca, server_cert, server_key, client_cert, client_key, rogue_cert, rogue_key)


def _https_get(port: int, ca: Path, cert: tuple[Path, Path] | None = None) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca))
    if cert:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def _env(pki: Pki, mutual: bool) -> dict[str, str]:
    env = {
        "OTEL_VMI_HV_SOURCE": "libvirt",
        "OTEL_VMI_HV_LIBVIRT_URI": demo_uri(),
        "OTEL_VMI_HV_TLS_CERT_FILE": str(pki.server_cert),
        "OTEL_VMI_HV_TLS_KEY_FILE": str(pki.server_key),
    }
    if mutual:
        env["OTEL_VMI_HV_TLS_CLIENT_CA_FILE"] = str(pki.ca)
    return env


def _wait_https(agent: AgentProcess, pki: Pki, cert: tuple[Path, Path] | None = None) -> str:
    def scrape() -> str | None:
        try:
            status, body = _https_get(agent.port, pki.ca, cert)
        except OSError:
            return None
        return body if status == 200 and "kubevirt_vmi_hypervisor_info{" in body else None

    return wait_until(scrape, 20, "an HTTPS scrape")


def test_metrics_over_https(pki: Pki) -> None:
    with AgentProcess(_env(pki, mutual=False)) as agent:
        body = _wait_https(agent, pki)
        assert 'hypervisor_type="qemu-tcg"' in body
        # Plain HTTP to the HTTPS port is told what is wrong, as Go servers do, not just reset.
        plain = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
        plain.request("GET", "/metrics")
        response = plain.getresponse()
        assert response.status == 400
        assert b"HTTP request to an HTTPS server" in response.read()
        plain.close()


def test_client_certificate_is_required_when_a_client_ca_is_set(pki: Pki) -> None:
    with AgentProcess(_env(pki, mutual=True)) as agent:
        _wait_https(agent, pki, (pki.client_cert, pki.client_key))
        for cert in (None, (pki.rogue_cert, pki.rogue_key)):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                _https_get(agent.port, pki.ca, cert)
        # The refused clients did not break the server for a legitimate one.
        assert _https_get(agent.port, pki.ca, (pki.client_cert, pki.client_key))[0] == 200


def test_key_that_does_not_match_the_certificate_is_a_config_error(pki: Pki) -> None:
    env = _env(pki, mutual=False)
    env["OTEL_VMI_HV_TLS_KEY_FILE"] = str(pki.client_key)
    with AgentProcess(env) as agent:
        assert agent.process is not None
        assert agent.process.wait(30) == 2
        assert "OTEL_VMI_HV_TLS_CERT_FILE" in agent.output()


def test_client_renegotiation_is_refused(pki: Pki) -> None:
    with AgentProcess(_env(pki, mutual=False)) as agent:
        _wait_https(agent, pki)
        # s_client renegotiates on a line "R", then sends the request; TLS 1.2 is the last
        # version with renegotiation.
        session = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{agent.port}", "-tls1_2", "-CAfile", str(pki.ca)],
            input=b"R\nGET /healthz HTTP/1.0\r\n\r\n",
            capture_output=True,
            timeout=20,
        )
        assert b"RENEGOTIATING" in session.stderr, session.stderr
        assert b"no renegotiation" in session.stderr
        assert b"HTTP/1.0 200" not in session.stdout
        assert _https_get(agent.port, pki.ca)[0] == 200


def test_a_corrupt_tls_record_costs_no_traceback(pki: Pki) -> None:
    with AgentProcess(_env(pki, mutual=False)) as agent:
        _wait_https(agent, pki)
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as raw:
                tls = ssl.create_default_context(cafile=str(pki.ca)).wrap_socket(
                    raw, server_hostname="127.0.0.1"
                )
                # An application-data record that does not decrypt: the server must drop the client.
                os.write(tls.fileno(), b"\x17\x03\x03\x00\x20" + bytes(32))
                try:
                    answer = tls.recv(1)
                except (ssl.SSLError, ConnectionError):
                    answer = b""
                assert answer == b"", "the server must drop the client"
        assert _https_get(agent.port, pki.ca)[0] == 200
        assert "Traceback" not in agent.output()


def test_a_rotated_certificate_is_served_without_a_restart(pki: Pki, tmp_path: Path) -> None:
    ca_key = pki.ca.with_suffix(".key")
    served_cert, served_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.server_cert, served_cert)
    shutil.copy(pki.server_key, served_key)
    env = _env(pki, mutual=False)
    env["OTEL_VMI_HV_TLS_CERT_FILE"], env["OTEL_VMI_HV_TLS_KEY_FILE"] = str(served_cert), str(served_key)
    with AgentProcess(env) as agent:
        _wait_https(agent, pki)
        before = _served_certificate(agent.port)
        renewed_cert, renewed_key = _issue(tmp_path, "renewed", pki.ca, ca_key, san="IP:127.0.0.1")
        # cert-manager's secret volume swaps both files; write the key first so no pair is mixed
        # for longer than an instant, as with an atomic symlink swap.
        shutil.copy(renewed_key, served_key)
        shutil.copy(renewed_cert, served_cert)
        renewed = wait_until(
            lambda: (cert := _served_certificate(agent.port)) != before and cert,
            20,
            "the renewed certificate",
        )
        assert renewed == ssl.PEM_cert_to_DER_cert(renewed_cert.read_text())
        assert _https_get(agent.port, pki.ca)[0] == 200
        assert agent.process is not None and agent.process.poll() is None


def _served_connections(port: int) -> int:
    """Connections the server side of ``port`` still holds (ESTABLISHED or CLOSE_WAIT), per the kernel."""
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                held += int(local.rsplit(":", 1)[1], 16) == port and state in ("01", "08")
    return held


def _kubelet_https_probe(port: int, path: str) -> int:
    """What kubelet's HTTPS prober does: no certificate check, Connection: close, a 1 s timeout."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=1)
    started = time.monotonic()
    try:
        connection.request("GET", path, headers={"Connection": "close", "User-Agent": "kube-probe/1.31"})
        response = connection.getresponse()
        response.read()
        return response.status if time.monotonic() - started < 1 else 0
    except OSError:
        return 0
    finally:
        connection.close()


def test_probes_over_https_are_answered_while_others_hold_every_connection(pki: Pki) -> None:
    env = _env(pki, mutual=False)
    env.update({"OTEL_VMI_HV_WEB_MAX_CONNECTIONS": "8", "OTEL_VMI_HV_WEB_READ_HEADER_TIMEOUT": "60s"})
    with AgentProcess(env) as agent:
        _wait_https(agent, pki)
        # The scrape above holds a place until the agent has closed its side; only then is the cap
        # free for the eight below.
        wait_until(lambda: not _served_connections(agent.port), 5, "the scrape's connection to close")
        held = [socket.create_connection(("127.0.0.1", agent.port), timeout=5) for _ in range(8)]

        def cap_is_reached() -> bool:
            # Connections that never start their handshake hold the cap: scrapes are refused. The
            # scrape above may still count for a moment, so the eighth may have landed beyond the
            # cap (closed within a second): one more is opened until the cap holds.
            if _kubelet_https_probe(agent.port, "/metrics") == 503:
                return True
            held.append(socket.create_connection(("127.0.0.1", agent.port), timeout=5))
            return False

        try:
            wait_until(cap_is_reached, 10, "the cap to be reached")
            statuses = [_kubelet_https_probe(agent.port, path) for path in ("/healthz", "/readyz") * 10]
            assert statuses == [200] * 20
        finally:
            for client in held:
                client.close()


def _served_certificate(port: int) -> bytes | None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            return tls.getpeercert(binary_form=True)
    except OSError:
        return None
