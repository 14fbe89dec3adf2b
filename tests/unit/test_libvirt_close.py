"""Stopping lets go of libvirt for good: after ``close()`` no call opens a connection, and a call
that was still connecting when ``close()`` ran lets go of its connection when it ends."""

from __future__ import annotations

import threading
from typing import Any

import libvirt
import pytest

from otel_vmi_hv.detection.libvirt.calls import LibvirtCalls
from otel_vmi_hv.detection.libvirt.daemons import LibvirtUnavailable
from otel_vmi_hv.model import FailureReason
from tests.agent_process import wait_until

URI = "test:///default"


def _closed(conn: Any) -> bool:
    try:
        conn.getHostname()
    except libvirt.libvirtError:
        return True
    return False


def test_a_call_connecting_while_closing_lets_go_and_no_call_follows() -> None:
    entered, release = threading.Event(), threading.Event()
    opened: list[Any] = []

    def slow_open(uri: str) -> Any:
        entered.set()
        release.wait(10)
        opened.append(libvirt.openReadOnly(uri))
        return opened[-1]

    calls = LibvirtCalls(10.0, keep_connections=True, open_read_only=slow_open)
    answers: list[str] = []
    caller = threading.Thread(target=lambda: answers.append(calls.call(URI, lambda c: c.getHostname())))
    caller.start()
    assert entered.wait(5)
    assert calls.close(timeout=1.0), "nothing was open yet"
    release.set()
    caller.join(10)
    assert answers, "the call that was under way still answers"
    wait_until(lambda: _closed(opened[0]), 5, "the connection opened during close() let go of")
    with pytest.raises(LibvirtUnavailable) as refused:
        calls.call(URI, lambda c: c.getHostname())
    assert refused.value.reason is FailureReason.UNREACHABLE
    assert len(opened) == 1, "no connection opened after close()"
