"""Phases: named, nested spans of a job's work, with the memory each started, ended and peaked at.

The face of the package (docs/architecture.md walks one phase through its rooms):

- :class:`PhaseScope` (``scope``): ``with phase(...)`` and ``@phase(...)``;
- :class:`PhaseCore` (``core``): what entering and leaving a phase does on the caller's thread;
- :class:`PhaseSpan` (``record``): the one record of a phase, and the OTel span user code sees;
- :class:`PhaseHandle`, :class:`PhaseProtocolError` (``handle``): a phase closed through a handle;
- :class:`SpanPath`, :class:`SpanPaths` (``span_path``): how phase spans reach the provider.

Imports only go down: scope -> core -> export -> span building, step sampling, histograms ->
record -> span path, figures, handle -> validation.
"""

from memspan.phases.core import PhaseCore, PhaseWatcher
from memspan.phases.handle import PhaseHandle, PhaseProtocolError
from memspan.phases.record import PhaseSpan, StepTrace
from memspan.phases.scope import PhaseScope
from memspan.phases.span_path import DEFERRED, SDK, SYNC, SpanPath, SpanPaths

__all__ = ["DEFERRED", "SDK", "SYNC", "PhaseCore", "PhaseHandle", "PhaseProtocolError",
           "PhaseScope", "PhaseSpan", "PhaseWatcher", "SpanPath", "SpanPaths", "StepTrace"]
