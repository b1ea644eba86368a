"""The ``opentelemetry_instrumentor`` entry point: memspan under ``opentelemetry-instrument``.

``instrument()`` runs from sitecustomize before the user's script imports anything: it must
not import torch or initialise CUDA. It creates the default tracker on the providers the
auto-instrumentation configured (or the ones passed in; with no distro installed, nobody
configured any, and it sets them up as ``memspan.configure()`` would), installs the torch auto phases
(lazily, when torch is imported) unless ``MEMSPAN_AUTO_PHASES=false``, and chains the
exception hooks. ``uninstrument()`` stops the sampler, removes every torch patch, restores
the hooks and silences the observable callbacks (the SDK cannot unregister them).

A configuration error is logged once and memspan stays off: it never crashes the program it
instruments.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from memspan.analysis.thresholds import LeakThresholds
from memspan.auto_phases import TorchAutoPhases
from memspan.bootstrap import global_providers_set, install_providers, shutdown_providers
from memspan.config import ConfigError, MemspanConfig
from memspan.drops import PROCESS_LEDGER
from memspan.package import _instruments
from memspan.tracker import Tracker, default_tracker_if_any, get_tracker, set_default_tracker

_logger = logging.getLogger(__name__)


class MemspanInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Loads memspan from ``opentelemetry-instrument`` or ``MemspanInstrumentor().instrument()``."""

    _tracker: Tracker | None = None
    _auto_phases: TorchAutoPhases | None = None
    _owned_providers: list[Any] = []

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        try:
            config = kwargs.get("config") or MemspanConfig.from_env()
            thresholds = LeakThresholds.from_env()
        except ConfigError as error:
            _logger.error("memspan: disabled because of a configuration error: %s", error)
            return
        tracer_provider = kwargs.get("tracer_provider")
        meter_provider = kwargs.get("meter_provider")
        if tracer_provider is None and meter_provider is None and not global_providers_set():
            # No distro/configurator set the SDK up: do what configure() does.
            MemspanInstrumentor._owned_providers = install_providers(config, None).owned
        tracker = Tracker(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            config=config,
            ledger=PROCESS_LEDGER,
            install_excepthooks=True,
            leak_thresholds=thresholds,
        )
        previous = set_default_tracker(tracker)
        if previous is not None:
            previous.shutdown()
        MemspanInstrumentor._tracker = tracker
        if config.auto_phases:
            auto = TorchAutoPhases(get_tracker)
            auto.install()
            MemspanInstrumentor._auto_phases = auto

    def _uninstrument(self, **kwargs: Any) -> None:
        auto = MemspanInstrumentor._auto_phases
        MemspanInstrumentor._auto_phases = None
        if auto is not None:
            auto.uninstall()
        tracker = MemspanInstrumentor._tracker
        MemspanInstrumentor._tracker = None
        if tracker is None:
            return
        tracker.shutdown()
        if default_tracker_if_any() is tracker:
            set_default_tracker(None)
        owned, MemspanInstrumentor._owned_providers = MemspanInstrumentor._owned_providers, []
        shutdown_providers(owned, 5.0)
