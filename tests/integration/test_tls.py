"""HTTPS on the metrics port, optionally with client certificates (mutual TLS)."""

from __future__ import annotations

import http.client
import ssl
import subprocess
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
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            plain = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
            plain.request("GET", "/metrics")
            plain.getresponse().read()


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
