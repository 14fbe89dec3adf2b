import itertools

from otel_vmi_hv.backoff import Backoff


def test_delays_grow_then_stay_at_the_cap():
    backoff = Backoff(initial=0.5, maximum=30.0, jitter=0.0)
    delays = [backoff.delay(n) for n in range(1, 12)]
    assert delays[0] == 0.5
    assert all(later >= earlier for earlier, later in itertools.pairwise(delays))
    assert delays[-1] == 30.0
    assert backoff.delay(10_000) == 30.0  # no overflow after a long outage


def test_jitter_spreads_retries_of_a_fleet_within_bounds():
    backoff = Backoff(initial=1.0, maximum=60.0, jitter=0.2)
    delays = {backoff.delay(3) for _ in range(200)}
    assert len(delays) > 100  # agents that failed together do not retry together
    assert all(3.2 <= delay <= 4.8 for delay in delays)
