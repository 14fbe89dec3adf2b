"""Keeps the OpenTelemetry SDK's per-attribute-set state of the info gauge bounded.

This is the only module of the agent that touches SDK internals, and why it must:

The OpenTelemetry metrics SDK specification (metrics/sdk.md, on observations of asynchronous
instruments) says: "The implementation SHOULD NOT produce aggregated metric data for a
previously-observed attribute set which is not observed during a successful callback": a reader
receives only the attribute sets observed since its last collection. The Python SDK exports
correctly, but it keeps the aggregation object of every attribute set ever observed (~1.5 KB per
reader) until the provider shuts down, and past the cardinality limit it folds every series into one
``otel.metric.overflow`` series. A node agent sees thousands of short-lived VMIs in its lifetime,
so both would happen; the public API has no way to release that state.

Because of that rule, the state is disposable between collections: each collection resets every
aggregation of the instrument and the callback observes what is current. The pruner runs inside
the gauge's own callback, which the SDK calls with its measurement-consumer lock held, so no other
collection is half-way through and every aggregation of the instrument is empty at that moment:
dropping them changes no exported point. It only does so when the table has grown well past the
live series count, so the cost is amortised to O(1) per series.

Checked with opentelemetry-sdk 1.45.x (`make test-newest` runs the tests against the newest
release). tests/unit/test_sdk_state.py fails if the SDK stops keeping this state (then this module
can go), if it stops following the rule above (then pruning would no longer be safe), or if the
internals moved (``supported`` turns False: the agent warns once and relies on the raised
cardinality limit alone).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

SLACK = 64


class AttributeStatePruner:
    def __init__(self, meter_provider: Any, instrument_name: str) -> None:
        self._provider = meter_provider
        self._name = instrument_name
        self.pruned = 0
        try:
            _ = meter_provider._measurement_consumer._reader_storages
            self.supported = True
        except AttributeError:
            self.supported = False
            log.warning(
                "this opentelemetry-sdk version keeps internals elsewhere: state of VMIs that are gone "
                "will not be freed (memory grows with churn)"
            )

    def _matches(self) -> list[Any]:
        storages = self._provider._measurement_consumer._reader_storages
        matches: list[Any] = []
        for storage in storages.values():
            for instrument, instrument_matches in list(storage._instrument_view_instrument_matches.items()):
                if instrument.name == self._name:
                    matches.extend(instrument_matches)
        return matches

    def state_size(self) -> int:
        """Attribute sets the SDK holds for the instrument, summed over readers (for tests)."""
        if not self.supported:
            return -1
        return sum(len(match._attributes_aggregation) for match in self._matches())

    def prune_if_bloated(self, live: int) -> None:
        """Drop the instrument's state where it exceeds twice the live series; call from its callback."""
        if not self.supported:
            return
        limit = 2 * live + SLACK
        try:
            for match in self._matches():
                if len(match._attributes_aggregation) > limit:
                    with match._lock:
                        self.pruned += len(match._attributes_aggregation)
                        match._attributes_aggregation = {}
        except AttributeError:
            self.supported = False
            log.warning("cannot prune OpenTelemetry SDK state in this SDK version", exc_info=True)
