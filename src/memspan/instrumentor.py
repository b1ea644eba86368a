"""The ``opentelemetry_instrumentor`` entry point: memspan under ``opentelemetry-instrument``.

``instrument()`` runs from sitecustomize before the user's script imports anything: it must
not import torch or initialise CUDA. It starts memspan through
:func:`memspan.bootstrap.instrument`, so there is one installation record and one drop
ledger per process whether memspan was started here or by ``memspan.configure()``: the
default tracker runs on the providers the auto-instrumentation configured (or the ones
passed in; with no distro installed, nobody configured any, and it sets them up as
``memspan.configure()`` would), and memspan's bounded exit replaces the SDK's. It installs
the torch auto phases (lazily, when torch is imported) unless ``MEMSPAN_AUTO_PHASES=false``,
and chains the exception hooks. Where the SDK left ``service.name`` at its placeholder
(``unknown_service:python3``) and no variable names the service, the configurator's
providers are named after the script (:func:`memspan.bootstrap.name_unnamed_service`). The
script's own ``memspan.configure()`` later joins this installation (no warning; see
:mod:`memspan.bootstrap`). ``uninstrument()`` shuts that installation down: it removes
every torch patch, stops the sampler, restores the hooks and silences the observable
callbacks (the SDK cannot unregister them); global providers that the auto-instrumentation
built keep running, with their own exit handlers back.

A configuration error is logged once and memspan stays off: it never crashes the program it
instruments.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from memspan import bootstrap
from memspan.analysis.thresholds import LeakThresholds
from memspan.auto_phases import TorchAutoPhases
from memspan.config import ConfigError, MemspanConfig
from memspan.package import _instruments
from memspan.tracker import disable, get_tracker

_logger = logging.getLogger(__name__)


class MemspanInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Loads memspan from ``opentelemetry-instrument`` or ``MemspanInstrumentor().instrument()``.

    It keeps no state of its own: what it started is the process's
    :class:`~memspan.bootstrap.Installation`.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        try:
            config = kwargs.get("config") or MemspanConfig.from_env()
            thresholds = LeakThresholds.from_env()
            installation = bootstrap.instrument(
                config, kwargs.get("tracer_provider"), kwargs.get("meter_provider"), thresholds
            )
        except ConfigError as error:
            disable(f"configuration error: {error}")
            return
        if config.auto_phases:
            auto = TorchAutoPhases(get_tracker)
            auto.install()
            installation.on_shutdown.append(auto.uninstall)

    def _uninstrument(self, **kwargs: Any) -> None:
        bootstrap.uninstrument()
