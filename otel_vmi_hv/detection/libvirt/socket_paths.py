"""Keeps libvirt socket paths under the 108-byte ``sun_path`` limit of AF_UNIX addresses.

A launcher's socket under /var/lib/kubelet/pods is longer than that. When a URI's ``socket=`` path
is too long, a symlink with a short name is made in a private directory and the URI points at
it; connect() follows the link, and only the short name has to fit into ``sun_path``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import urllib.parse

log = logging.getLogger(__name__)

SUN_PATH_MAX = 107  # 108 bytes including the terminating NUL
_SOCKET_PARAM = re.compile(r"[?&]socket=([^&]*)")


def _socket_path(match: re.Match[str] | None) -> str:
    return urllib.parse.unquote(match.group(1)) if match else ""


class SocketPathShortener:
    def __init__(self, directory: str | None = None) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._links: dict[str, str] = {}  # long socket path → link path

    def shorten(self, uri: str) -> str:
        """Return ``uri`` with a too-long ``socket=`` path replaced by a short link to it."""
        match = _SOCKET_PARAM.search(uri)
        socket_path = _socket_path(match)
        if match is None or len(os.fsencode(socket_path)) <= SUN_PATH_MAX:
            return uri
        with self._lock:
            link = self._links.get(socket_path)
            if link is None:
                self._directory = self._directory or tempfile.mkdtemp(prefix="ovh-")
                name = hashlib.sha256(os.fsencode(socket_path)).hexdigest()[:16]
                link = os.path.join(self._directory, name)
                if os.path.lexists(link):
                    os.unlink(link)
                os.symlink(socket_path, link)
                self._links[socket_path] = link
        # String surgery, not urlunsplit: that would turn "qemu+unix:///session" into "qemu+unix:/session".
        return uri[: match.start(1)] + link + uri[match.end(1) :]

    def release(self, uri: str) -> None:
        """Remove the link made for ``uri`` (its launcher is gone)."""
        with self._lock:
            link = self._links.pop(_socket_path(_SOCKET_PARAM.search(uri)), None)
        if link is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)

    def explain(self, text: str) -> str:
        """Put the real socket paths back into a message that names their short links."""
        with self._lock:
            links = list(self._links.items())
        for long_path, link in links:
            text = text.replace(link, long_path)
        return text

    def close(self) -> None:
        with self._lock:
            self._links.clear()
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
