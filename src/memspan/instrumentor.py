"""The ``opentelemetry_instrumentor`` entry point: memspan under ``opentelemetry-instrument``.

``instrument()`` runs from sitecustomize before the user's script imports anything: it must
not import torch or initialise CUDA. It creates the default tracker on the providers the
auto-instrumentation configured (or the ones passed in), and ``uninstrument()`` stops the
sampler and silences the observable callbacks (the SDK cannot unregister them).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from memspan.config import ConfigError, MemspanConfig
from memspan.package import _instruments
from memspan.tracker import Tracker, default_tracker_if_any, set_default_tracker

_logger = logging.getLogger(__name__)


class MemspanInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Loads memspan from ``opentelemetry-instrument`` or ``MemspanInstrumentor().instrument()``."""

    _tracker: Tracker | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        try:
            config = kwargs.get("config") or MemspanConfig.from_env()
        except ConfigError as error:
            _logger.error("memspan: disabled because of a configuration error: %s", error)
            return
        tracker = Tracker(
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=kwargs.get("meter_provider"),
            config=config,
            install_excepthooks=True,
        )
        previous = set_default_tracker(tracker)
        if previous is not None:
            previous.shutdown()
        MemspanInstrumentor._tracker = tracker

    def _uninstrument(self, **kwargs: Any) -> None:
        tracker = MemspanInstrumentor._tracker
        MemspanInstrumentor._tracker = None
        if tracker is None:
            return
        tracker.shutdown()
        if default_tracker_if_any() is tracker:
            set_default_tracker(None)
