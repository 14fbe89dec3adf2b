"""Keeps the OpenTelemetry SDK's per-attribute-set state of the info gauge bounded; the only module
that touches SDK internals, and why it must: the SDK keeps the aggregation of every attribute set
ever observed until shutdown (past the cardinality limit it folds series into an overflow one), and
a node agent sees thousands of short-lived VMIs. The specification says a reader receives only the
sets observed since its last collection, so the state is disposable between collections. Pruning
runs inside the gauge's own callback, under the SDK's collection lock, when every aggregation of
the instrument is empty: dropping them changes no exported point; only when the table grew well
past the live series, so its cost is amortised. tests/unit/test_sdk_state.py fails if the SDK stops
keeping this state, stops following that rule, or moves its internals (``supported`` turns False).
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

    def prune_if_bloated(self, live: int) -> None:
        """Drop the instrument's state where it exceeds twice the live series; call from its callback."""
        if not self.supported:
            return
        limit = 2 * live + SLACK
        try:
            for match in self._matches():
                if len(match._attributes_aggregation) > limit:
                    with match._lock:
                        match._attributes_aggregation = {}
        except AttributeError:
            self.supported = False
            log.warning("cannot prune OpenTelemetry SDK state in this SDK version", exc_info=True)
