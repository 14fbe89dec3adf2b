"""Scrapes that arrive while /metrics is being rendered wait for that rendering and share it, and
an unchanged state is served from memory: scrapes cost no collection unless something changed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.metrics import CallbackOptions, Observation

from otel_vmi_hv.agent import Agent
from otel_vmi_hv.config import load_settings
from tests.agent_process import demo_uri, http_get, wait_until
from tests.exposition import info_series
from tests.harness.ports import free_port

PARALLEL = 12


@pytest.fixture
def agent() -> Iterator[Agent]:
    settings = load_settings(
        {
            "OTEL_VMI_HV_SOURCE": "libvirt",
            "OTEL_VMI_HV_LIBVIRT_URI": demo_uri(),
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(free_port()),
            "OTEL_VMI_HV_NODE_NAME": "node-a",
            # The demo node never changes; a re-listing each second moves one input (the sync time).
            "OTEL_VMI_HV_RESYNC_INTERVAL": "1s",
        }
    )
    running = Agent(settings)
    running.start()
    yield running
    running.stop(budget=2)


def _url(agent: Agent) -> str:
    return f"http://127.0.0.1:{agent.settings.prometheus_port}/metrics"


class CollectionGate:
    """An observable gauge on the agent's MeterProvider: counts collections and can hold one.

    Every collection of /metrics runs every callback of the provider, so this one sees each
    collection (through the OpenTelemetry API only); while the gate is closed a collection waits
    inside it, as a slow one would.
    """

    def __init__(self, agent: Agent) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.open = threading.Event()
        self.open.set()
        _meter_provider(agent).get_meter("scrape-sharing-test").create_observable_gauge(
            "scrape_sharing_test_gate", callbacks=[self._observe]
        )

    def _observe(self, _: CallbackOptions) -> list[Observation]:
        self.calls += 1
        self.entered.set()
        assert self.open.wait(10), "the test never opened the gate"
        return [Observation(1)]


def _meter_provider(agent: Agent) -> Any:
    """The agent's MeterProvider (the one place this module reaches into the agent)."""
    assert agent.telemetry is not None
    return agent.telemetry.meter_provider


def _send_get(url_port: int) -> socket.socket:
    """Send a whole GET /metrics and return the socket, to read the answer later."""
    conn = socket.create_connection(("127.0.0.1", url_port), timeout=10)
    conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    return conn


def _read_body(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    conn.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def test_unchanged_state_is_served_without_a_collection(agent: Agent) -> None:
    wait_until(lambda: len(info_series(http_get(_url(agent))[1])) == 6, 10, "the demo node detected")
    gate = CollectionGate(agent)
    port = agent.settings.prometheus_port
    bodies = [_read_body(_send_get(port)) for _ in range(10)]
    # Only a change costs a collection, and every change shows in the body (a re-listing moves the
    # sync time and the relist counter): at most one collection per distinct body.
    assert gate.calls <= len(set(bodies)) < len(bodies), (gate.calls, len(set(bodies)))


def test_parallel_scrapes_share_one_rendering(agent: Agent) -> None:
    wait_until(lambda: len(info_series(http_get(_url(agent))[1])) == 6, 10, "the demo node detected")
    gate = CollectionGate(agent)
    port = agent.settings.prometheus_port
    gate.open.clear()
    gate.entered.clear()
    # Scrape until one needs a collection (the next re-listing moved the sync time): it stops
    # inside the gate, holding the rendering.
    first: list[socket.socket] = []
    deadline = time.monotonic() + 5
    while not gate.entered.is_set():
        assert time.monotonic() < deadline, "no scrape needed a collection within 5 s"
        conn = _send_get(port)
        if gate.entered.wait(0.2):
            first.append(conn)
        else:
            conn.close()  # served from memory; try again after the next re-listing
    calls_before = gate.calls
    waiting = [_send_get(port) for _ in range(PARALLEL)]  # all sent while the rendering is held
    gate.open.set()
    bodies = [_read_body(conn) for conn in first + waiting]
    # Without sharing, every waiting scrape would collect again (PARALLEL more calls) although
    # nothing changed; with it, only a re-listing falling in between costs one more, with a
    # different body.
    assert gate.calls - calls_before + 1 <= len(set(bodies)), (gate.calls - calls_before, len(set(bodies)))
    assert len(info_series(bodies[-1].decode())) == 6
