"""A memory source whose readings the test scripts, for sampler and instrument tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memspan.metric_catalogue import Cadence, MetricRow
from memspan.sources.base import DeviceIdentity, Reading, SourceStatus


class ScriptedSource:
    def __init__(self, name: str = "scripted", readings: Sequence[Reading] = (),
                 error: Exception | None = None, cadence: Cadence = Cadence.FAST,
                 metrics: Sequence[MetricRow] = ()) -> None:
        self.name = name
        self.cadence = cadence
        self.metrics = tuple(metrics)
        self.readings = list(readings)
        self.error = error
        self.samples = 0
        self.forked = 0

    def probe(self) -> SourceStatus:
        return SourceStatus(True)

    def devices(self) -> Sequence[DeviceIdentity]:
        return ()

    def sample(self) -> Sequence[Reading]:
        self.samples += 1
        if self.error is not None:
            raise self.error
        return list(self.readings)

    def capabilities(self) -> frozenset[str]:
        return frozenset(r.metric for r in self.readings)

    def snapshot(self) -> dict[str, Any]:
        return {"samples": self.samples}

    def after_fork(self) -> None:
        self.forked += 1

    def close(self) -> None:
        pass
