"""The HTTPS certificate, reloaded when its files change (cert-manager rotates them in place).

Each new connection asks for the current context; the files are looked at (stat only) at most once a
second. A half-written or mismatched pair keeps the previous context and is logged once, so a
rotation in progress never takes the endpoint down.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0
UNUSABLE = "TLS certificate files changed but cannot be loaded (%s); still serving the previous certificate"


def server_context(cert_file: str, key_file: str, client_ca_file: str | None) -> ssl.SSLContext:
    """Server-side TLS (1.2+), client renegotiation refused; with a client CA, a client
    certificate signed by it is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        context.load_verify_locations(cafile=client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _signature(path: str) -> tuple[int, int, int, int]:
    """What changes when a file is rewritten or its symlink (Kubernetes secret volumes) is swapped."""
    try:
        info = os.stat(path)
    except OSError:
        return (0, 0, 0, 0)
    return (info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns)


class ReloadingTLS:
    """Server-side TLS (1.2+, no renegotiation), reloaded when the files change on disk."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str | None = None) -> None:
        self._files = (cert_file, key_file, client_ca_file)
        self._lock = threading.Lock()
        self._signatures = tuple(map(_signature, filter(None, self._files)))
        self._context = server_context(*self._files)
        self._checked = time.monotonic()

    def context(self) -> ssl.SSLContext:
        """The context for a new connection; reloaded first if a file changed."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked < CHECK_INTERVAL:
                return self._context
            self._checked = now
            signatures = tuple(map(_signature, filter(None, self._files)))
            if signatures == self._signatures:
                return self._context
            self._signatures = signatures  # a pair that fails is tried again only once it changes
            try:
                self._context = server_context(*self._files)
                log.info("TLS certificate reloaded from %s", self._files[0])
            except OSError as error:  # ssl.SSLError is one
                log.warning(UNUSABLE, error)
            return self._context


tls_context = ReloadingTLS  # the name the agent builds it by
