"""Stormlog's phase runtime names at the import path the README promises (``memspan.runtime``).

A thin re-export: the code lives in :mod:`memspan.compat.stormlog` and :mod:`memspan.phases`.
"""

from memspan.compat.stormlog import PhaseBoundary, PhaseRecorder, PhaseToken
from memspan.phases.handle import PhaseHandle, PhaseProtocolError
from memspan.phases.validation import MAX_DEPTH, format_path, validate_phase_name

__all__ = ["MAX_DEPTH", "PhaseBoundary", "PhaseHandle", "PhaseProtocolError", "PhaseRecorder",
           "PhaseToken", "format_path", "validate_phase_name"]
