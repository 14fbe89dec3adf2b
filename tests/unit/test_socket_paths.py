"""Launcher socket paths longer than sun_path still connect, through a short link."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from otel_vmi_hv.detection.libvirt.socket_paths import SUN_PATH_MAX, SocketPathShortener


def test_short_paths_and_other_uris_are_left_alone(tmp_path: Path) -> None:
    shortener = SocketPathShortener(str(tmp_path))
    for uri in ("qemu:///system", "test:///default", "qemu+unix:///session?socket=/pods/x/sock"):
        assert shortener.shorten(uri) == uri


def test_long_socket_path_is_reached_through_a_link(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / "volumes" / "kubernetes.io~empty-dir" / "libvirt-runtime"
    deep.mkdir(parents=True)
    target = deep / "virtqemud-sock"
    assert len(str(target)) > SUN_PATH_MAX
    cwd = os.getcwd()
    os.chdir(deep)  # bind through a relative name: the absolute one does not fit either
    try:
        server = socket.socket(socket.AF_UNIX)
        server.bind("virtqemud-sock")
        server.listen(1)
    finally:
        os.chdir(cwd)
    links = tmp_path / "links"
    links.mkdir()
    shortener = SocketPathShortener(str(links))
    uri = f"qemu+unix:///session?socket={target}&mode=legacy"
    short = shortener.shorten(uri)
    assert short.startswith("qemu+unix:///session?socket=")
    assert short.endswith("&mode=legacy")
    link = short.split("socket=")[1].split("&")[0]
    assert len(link) <= SUN_PATH_MAX
    client = socket.socket(socket.AF_UNIX)
    client.connect(link)
    client.close()
    server.close()
    assert shortener.shorten(uri) == short, "one link per socket"
    assert (
        shortener.explain(f"Failed to connect socket to '{link}'")
        == f"Failed to connect socket to '{target}'"
    )
    shortener.release(uri)
    assert not os.path.lexists(link)
