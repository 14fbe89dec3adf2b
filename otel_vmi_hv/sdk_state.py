"""Keeps the OpenTelemetry SDK's per-attribute-set state of the info gauge bounded.

The SDK (1.45) never frees the aggregation it creates for an attribute set of an asynchronous
instrument: every VMI ever seen keeps ~1.5 KB per reader forever, and past the cardinality limit
the whole metric collapses into one ``otel.metric.overflow`` series. A node agent that sees
thousands of short-lived VMIs must not do either.

For an observable gauge that state is disposable between collections: every collection resets
each aggregation's value to None and the callback re-observes what is current. The pruner runs
inside the gauge's own callback, which the SDK calls with its measurement-consumer lock held, so
no other collection is half-way through and every aggregation of this instrument is empty at that
moment: dropping them loses nothing. It only does so when the table has grown well past the live
series count, so the cost is amortised to O(1) per series.

This reaches into SDK internals. ``supported`` is False when they are not where expected (another
SDK version); the agent then warns once and relies on the raised cardinality limit alone.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

SLACK = 64


class AttributeStatePruner:
    def __init__(self, meter_provider: Any, instrument: Any) -> None:
        self._provider = meter_provider
        self._instrument = instrument
        self.pruned = 0
        try:
            consumer = meter_provider._measurement_consumer
            _ = consumer._reader_storages
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
            matches.extend(storage._instrument_view_instrument_matches.get(self._instrument, ()))
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
