"""What /metrics answers: the format chosen from Accept, gzip from Accept-Encoding, and the body
cache that keeps unchanged scrapes from collecting or compressing again."""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from otel_vmi_hv.export.exposition import (
    Deflater,
    Exposition,
    Format,
    accepts_gzip,
    choose_format,
    raw_deflater,
)
from tests.exposition import (
    PROMETHEUS_2_42,
    PROMETHEUS_2_55,
    PROMETHEUS_3,
    PROMETHEUS_3_PROTO_FIRST,
)

OM, TEXT = Format.OPENMETRICS, Format.TEXT


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PROMETHEUS_2_42, OM),
        (PROMETHEUS_2_55, OM),
        (PROMETHEUS_3, OM),
        (PROMETHEUS_3_PROTO_FIRST, OM),
        # scrape_protocols: [PrometheusText0.0.4, OpenMetricsText1.0.0]
        ("text/plain;version=0.0.4;q=0.6,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.4", TEXT),
        ("", TEXT),  # no Accept: curl, wget
        ("*/*", TEXT),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", TEXT),  # a browser
        ("application/openmetrics-text", OM),
        ("Application/OpenMetrics-Text; Version=1.0.0", OM),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", OM),
        ("application/*", OM),
        ("application/openmetrics-text;version=0.0.1", TEXT),  # a version not served
        ("application/openmetrics-text;version=2.0.0", TEXT),
        ("application/openmetrics-text;q=0, */*", TEXT),  # refused outright
        ("application/openmetrics-text;q=0", TEXT),
        ("application/openmetrics-text;q=0.000", TEXT),
        ("application/openmetrics-text;q=bogus", TEXT),  # a malformed quality refuses
        ("application/openmetrics-text;q=1.5", TEXT),
        ("application/openmetrics-text;escaping=underscores", OM),
        ("application/openmetrics-text;escaping=values", OM),
        ("application/openmetrics-text;escaping=dots", TEXT),  # would double every underscore
        ("text/plain;q=0.9, application/openmetrics-text;q=0.5", TEXT),
        ("text/plain;q=0.5, application/openmetrics-text;q=0.9", OM),
        ("text/*;q=0.5, application/openmetrics-text;q=0.6", OM),
        # equal quality: the more specific range, then the one listed first
        ("application/openmetrics-text;version=1.0.0, text/plain", OM),
        ("text/plain;version=0.0.4, application/openmetrics-text", TEXT),
        ("application/openmetrics-text, text/plain", OM),
        ("text/plain, application/openmetrics-text", TEXT),
        # the most specific range decides, even when a wildcard says more
        ("application/openmetrics-text;version=1.0.0;q=0.1, application/*;q=1, text/plain;q=0.5", TEXT),
        (",, ;q=1, application/openmetrics-text", OM),  # empty items are skipped
    ],
)
def test_choose_format_honours_the_clients_preferences(accept: str, expected: Format) -> None:
    assert choose_format(accept) is expected


def test_each_format_names_its_content_type() -> None:
    assert OM.content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert TEXT.content_type == "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000, identity", False),
        ("deflate, gzip;q=0.5", True),
        ("*", True),
        ("*;q=0", False),
        ("identity", False),
        ("", False),
        ("br;q=1, *;q=0.1, gzip;q=0", False),
    ],
)
def test_gzip_honours_accept_encoding_q_values(accept_encoding: str, gzipped: bool) -> None:
    assert accepts_gzip(accept_encoding) is gzipped


# ------------------------------------------------------------------------------------ the cache

COLLECTED = b"".join(b'kubevirt_vmi_hypervisor_info{name="vm-%05d"} 1.0\n' % i for i in range(2000))


class CountingDeflaters:
    """A deflater factory that counts how many bytes each scrape really compresses."""

    def __init__(self) -> None:
        self.fed = 0
        self.made = 0

    def __call__(self, small: bool) -> Deflater:
        self.made += 1
        inner = raw_deflater(small)
        counter = self

        class Counting:
            def compress(self, data: bytes, /) -> bytes:
                counter.fed += len(data)
                return inner.compress(data)

            def flush(self, mode: int = zlib.Z_FINISH, /) -> bytes:
                return inner.flush(mode)

        return Counting()


class Fresh:
    """Stands in for the process metrics: a different value at every scrape."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fmt: Format) -> bytes:
        self.calls += 1
        return b"process_cpu_seconds_total %d.0\n" % self.calls


class State:
    """What the owner of the cache reads at scrape time; ``change`` stands for any input changing."""

    def __init__(self) -> None:
        self.version = 0

    def __call__(self) -> int:
        return self.version

    def change(self) -> None:
        self.version += 1


def _exposition(
    state: State | None = None, collect: Callable[[Format], bytes] | None = None
) -> tuple[Exposition, Fresh, CountingDeflaters, list[Format]]:
    collected: list[Format] = []

    def default_collect(fmt: Format) -> bytes:
        collected.append(fmt)
        return COLLECTED

    fresh, deflaters = Fresh(), CountingDeflaters()
    exposition = Exposition(state or State(), collect or default_collect, fresh, deflater=deflaters)
    return exposition, fresh, deflaters, collected


def _one_member(body: bytes) -> bytes:
    """The decompressed body, asserting it is exactly one gzip member (what curl reads in full)."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    plain = decompressor.decompress(body) + decompressor.flush()
    assert decompressor.eof and decompressor.unused_data == b"", "one gzip member, nothing after it"
    return plain


@pytest.mark.parametrize("fmt", [TEXT, OM])
def test_a_gzip_body_is_one_member_holding_the_cached_and_the_fresh_part(fmt: Format) -> None:
    exposition, _, _, _ = _exposition()
    eof = b"# EOF\n" if fmt is OM else b""
    for n in (1, 2, 3):
        scrape = exposition.render(fmt, want_gzip=True)
        assert scrape.encoding == "gzip" and scrape.content_type == fmt.content_type
        expected = COLLECTED + b"process_cpu_seconds_total %d.0\n" % n + eof
        assert _one_member(scrape.body) == expected
        assert gzip.decompress(scrape.body) == expected


def test_a_second_unchanged_gzip_scrape_compresses_only_the_fresh_part() -> None:
    exposition, _, deflaters, collected = _exposition()
    first = exposition.scrape(PROMETHEUS_3, "gzip")
    fed_first = deflaters.fed
    second = exposition.scrape(PROMETHEUS_3, "gzip")
    fresh_part = len(b"process_cpu_seconds_total 2.0\n# EOF\n")
    assert deflaters.fed - fed_first == fresh_part, "the cached part must not be compressed again"
    assert fed_first > len(COLLECTED), "the first scrape compressed the collected part"
    assert collected == [OM]
    # The compressed cached part is sent again byte for byte; only the end differs.
    shared = len(first.body) - 64
    assert second.body[:shared] == first.body[:shared]
    assert gzip.decompress(second.body).endswith(b"process_cpu_seconds_total 2.0\n# EOF\n")


def test_a_change_collects_and_compresses_the_new_body_once() -> None:
    state = State()
    exposition, _, deflaters, collected = _exposition(state)
    exposition.render(TEXT, want_gzip=True)
    state.change()
    before = deflaters.fed
    exposition.render(TEXT, want_gzip=True)
    assert deflaters.fed - before > len(COLLECTED)
    before = deflaters.fed
    exposition.render(TEXT, want_gzip=True)
    assert deflaters.fed - before < 64
    assert collected == [TEXT, TEXT]


def test_unchanged_plain_scrapes_are_the_same_bytes_and_collect_once_per_format() -> None:
    exposition, _, deflaters, collected = _exposition()
    bodies = [exposition.render(fmt, want_gzip=False).body for fmt in (TEXT, OM, TEXT, OM)]
    assert bodies[0] == COLLECTED + b"process_cpu_seconds_total 1.0\n"
    assert bodies[1] == COLLECTED + b"process_cpu_seconds_total 2.0\n# EOF\n"
    assert bodies[2][: len(COLLECTED)] == bodies[0][: len(COLLECTED)]
    assert collected == [TEXT, OM], "one collection per format while the state stands"
    assert deflaters.made == 0, "nothing compressed when nobody asked for gzip"


def test_small_bodies_are_not_compressed() -> None:
    exposition = Exposition(State(), lambda _fmt: b"up 1.0\n", lambda _fmt: b"")
    scrape = exposition.scrape(PROMETHEUS_3, "gzip")
    assert scrape.encoding is None and scrape.body == b"up 1.0\n# EOF\n"


def test_concurrent_scrapes_of_a_changed_state_collect_once() -> None:
    entered, release = threading.Event(), threading.Event()
    calls: list[Format] = []

    def slow_collect(fmt: Format) -> bytes:
        calls.append(fmt)
        entered.set()
        assert release.wait(10)
        return COLLECTED

    exposition, _, _, _ = _exposition(collect=slow_collect)
    with ThreadPoolExecutor(8) as pool:
        scrapes = [pool.submit(exposition.scrape, PROMETHEUS_3, "gzip") for _ in range(8)]
        assert entered.wait(5)
        release.set()
        bodies = [gzip.decompress(scrape.result(timeout=10).body) for scrape in scrapes]
    assert calls == [OM]
    assert all(body.startswith(COLLECTED) and body.endswith(b"# EOF\n") for body in bodies)


def test_a_failed_collection_is_not_cached() -> None:
    failures = [RuntimeError("boom")]

    def collect(fmt: Format) -> bytes:
        if failures:
            raise failures.pop()
        return COLLECTED

    exposition, _, _, _ = _exposition(collect=collect)
    with pytest.raises(RuntimeError):
        exposition.render(TEXT, want_gzip=True)
    assert gzip.decompress(exposition.render(TEXT, want_gzip=True).body).startswith(COLLECTED)


# ------------------------------------------------------------- the answer without a collection


def test_cached_answers_only_what_needs_no_collection_and_no_compression_of_the_collected_part() -> None:
    state = State()
    exposition, _, deflaters, collected = _exposition(state)
    assert exposition.cached(PROMETHEUS_3, "gzip") is None, "nothing collected yet"
    exposition.scrape(PROMETHEUS_3, "")  # collected, not yet compressed
    plain = exposition.cached(PROMETHEUS_3, "")
    assert plain is not None and plain.body.startswith(COLLECTED) and plain.body.endswith(b"# EOF\n")
    assert exposition.cached(PROMETHEUS_3, "gzip") is None, "compressing the collected part is for a thread"
    assert deflaters.fed == 0
    exposition.scrape(PROMETHEUS_3, "gzip")
    fed = deflaters.fed
    answer = exposition.cached(PROMETHEUS_3, "gzip")
    assert answer is not None and answer.encoding == "gzip"
    assert _one_member(answer.body).endswith(b"# EOF\n")
    assert deflaters.fed - fed < 64, "only the fresh part compressed"
    assert exposition.cached("", "") is None, "text was never collected"
    state.change()
    assert exposition.cached(PROMETHEUS_3, "gzip") is None, "the state changed"
    assert collected == [OM]


def test_cached_never_waits_for_a_running_collection() -> None:
    state = State()
    entered, release = threading.Event(), threading.Event()
    slow = [False]

    def collect(fmt: Format) -> bytes:
        if slow[0]:
            entered.set()
            assert release.wait(10)
        return COLLECTED

    exposition, _, _, _ = _exposition(state, collect)
    exposition.scrape("", "")
    slow[0] = True
    state.change()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(exposition.scrape, "", "")
        assert entered.wait(5)
        assert exposition.cached("", "") is None  # returns at once while the lock is held
        release.set()
        running.result(timeout=10)
    assert exposition.cached("", "") is not None
