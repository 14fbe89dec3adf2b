"""The background-work primitive every loop of the agent runs on."""

from __future__ import annotations

import logging
import threading

import pytest

from otel_vmi_hv.worker import Worker, run_once, stop_all


def test_a_stop_cuts_the_loops_wait_short_and_join_sees_the_end() -> None:
    turns = []

    def loop(worker: Worker) -> None:
        while not worker.sleep(3600):
            turns.append(1)

    worker = Worker("looping", loop)
    worker.start()
    started_alive = worker.alive
    worker.stop()
    assert worker.join(5.0)
    assert (started_alive, worker.alive) == (True, False)
    assert turns == []


def test_a_worker_starts_again_after_a_stop_with_its_name() -> None:
    names: list[str] = []
    seen = threading.Event()

    def loop(worker: Worker) -> None:
        names.append(threading.current_thread().name)
        seen.set()
        worker.sleep(3600)

    worker = Worker("again", loop)
    for _ in range(2):
        seen.clear()
        worker.start()
        assert seen.wait(5.0)
        worker.stop()
        assert worker.join(5.0)
    assert names == ["again", "again"]


def test_join_gives_up_at_its_deadline_on_a_loop_that_ignores_stop() -> None:
    release = threading.Event()
    worker = run_once("stuck", lambda: release.wait(30))
    try:
        assert not stop_all([worker], timeout=0.05)
        assert worker.alive
    finally:
        release.set()
    assert worker.join(5.0)


def test_a_loop_that_raises_is_logged_as_a_bug(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_: Worker) -> None:
        raise ValueError("handler bug")

    worker = Worker("broken", broken)
    with caplog.at_level(logging.ERROR, logger="otel_vmi_hv.worker"):
        worker.start()
        assert worker.join(5.0)
    (record,) = caplog.records
    assert "broken" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError
