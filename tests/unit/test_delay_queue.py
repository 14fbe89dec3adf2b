"""The delaying work queue: due times on an injected clock, one holder per key, re-adds, shutdown."""

from __future__ import annotations

import threading

from otel_vmi_hv.delay_queue import DelayQueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[DelayQueue[str], Clock]:
    clock = Clock()
    return DelayQueue(clock), clock


def test_a_key_is_due_after_its_delay_and_in_due_order() -> None:
    queue, clock = make()
    queue.add_after("late", 5.0)
    queue.add_after("soon", 1.0)
    assert queue.pop_due() is None
    clock.now += 1.0
    assert queue.pop_due() == "soon"
    assert queue.pop_due() is None
    clock.now += 4.0
    assert queue.pop_due() == "late"


def test_adding_again_keeps_the_earlier_due_time() -> None:
    queue, clock = make()
    queue.add_after("a", 10.0)
    queue.add_after("a", 2.0)
    queue.add_after("a", 30.0)
    clock.now += 2.0
    assert queue.pop_due() == "a"
    queue.done("a")
    clock.now += 30.0
    assert queue.pop_due() is None, "one item, handed out once"


def test_one_holder_per_key_and_a_re_add_while_held_runs_again_after_done() -> None:
    queue, _ = make()
    queue.add_after("a", 0.0)
    queue.add_after("b", 0.0)
    assert queue.pop_due() == "a"
    queue.add_after("a", 0.0)  # e.g. a new domain lifetime while "a" is being detected
    assert queue.pop_due() == "b", "a is held: not handed to a second worker"
    assert queue.pop_due() is None
    queue.done("a")
    assert queue.pop_due() == "a", "due again once its holder is done"


def test_a_retry_added_while_held_keeps_its_delay() -> None:
    queue, clock = make()
    queue.add_after("a", 0.0)
    assert queue.pop_due() == "a"
    queue.add_after("a", 3.0)  # a failed attempt schedules its retry before it is done
    queue.done("a")
    assert queue.pop_due() is None
    clock.now += 3.0
    assert queue.pop_due() == "a"


def test_discard_forgets_a_queued_and_a_deferred_key() -> None:
    queue, clock = make()
    queue.add_after("a", 1.0)
    queue.discard("a")
    clock.now += 1.0
    assert queue.pop_due() is None
    queue.add_after("b", 0.0)
    assert queue.pop_due() == "b"
    queue.add_after("b", 0.0)
    assert queue.pop_due() is None  # deferred behind its holder
    queue.discard("b")
    queue.done("b")
    assert queue.pop_due() is None


def test_idle_means_nothing_due_and_nothing_held() -> None:
    queue, clock = make()
    assert queue.idle()
    queue.add_after("a", 5.0)
    assert queue.idle(), "not due yet"
    clock.now += 5.0
    assert not queue.idle()
    assert queue.pop_due() == "a"
    assert not queue.idle(), "held"
    queue.done("a")
    assert queue.idle() and queue.wait_idle(0.0)


def test_wait_idle_returns_when_the_holder_is_done_or_says_it_is_not_idle() -> None:
    queue, _ = make()
    queue.add_after("a", 0.0)
    assert queue.pop_due() == "a"
    assert not queue.wait_idle(0.0)
    holder = threading.Thread(target=queue.done, args=("a",))
    holder.start()
    assert queue.wait_idle(10)
    holder.join()


def test_get_hands_out_a_due_key_and_shutdown_wakes_every_getter() -> None:
    queue: DelayQueue[str] = DelayQueue()
    queue.add_after("a", 0.0)
    assert queue.get() == "a"
    got: list[str | None] = []
    getters = [threading.Thread(target=lambda: got.append(queue.get())) for _ in range(3)]
    for getter in getters:
        getter.start()
    queue.shut_down()
    for getter in getters:
        getter.join(10)
    assert got == [None, None, None]
    queue.add_after("b", 0.0)
    assert queue.get() is None, "nothing is handed out after shutdown"
