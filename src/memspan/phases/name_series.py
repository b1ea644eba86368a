"""The series the phase histograms record under: phase paths, bounded when names embed numbers.

A phase name built with an f-string (``memspan.phase(f"step {i}")``) makes a new path, and so
a new metric series, for every number: 2,001 steps, 2,001 series per histogram. Here each
path is mapped to the path its histograms record under:

- a path is its own series while its *template* (the path with every run of digits written
  ``<n>``) has at most :data:`MAX_PATHS_PER_TEMPLATE` distinct paths;
- past that, further paths of the template are recorded under the template itself
  (``step <n>``), counted (``phase_path_folded``) and warned about once, naming the fix: the
  number belongs in an attribute (``memspan.phase("step", step=i)``).

Invariants: the mapping is decided once per distinct path (a dict lookup afterwards), on the
export worker, never on the caller's thread; it remembers at most :data:`MAX_PATHS` paths
(beyond that a path whose template is folded is folded, others pass unchanged, and nothing
more is remembered), so it never grows with load. Spans keep their real names and paths;
only the metric series are bounded.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from memspan import names
from memspan.drops import PHASE_PATH_FOLDED, DropLedger

_logger = logging.getLogger(__name__)

#: distinct paths one template may have before the next ones are folded into it
MAX_PATHS_PER_TEMPLATE: Final = 20
#: the most paths remembered
MAX_PATHS: Final = 4096
_DIGITS = re.compile(r"\d+")


class SeriesPaths:
    """Phase path -> the path its histogram series is recorded under (module docstring)."""

    def __init__(self, ledger: DropLedger) -> None:
        self._ledger = ledger
        self._paths: dict[str, str] = {}
        self._per_template: dict[str, int] = {}
        self._folded: set[str] = set()
        self._warned = False

    def series_path(self, path: str) -> str:
        known = self._paths.get(path)
        if known is not None:
            return known
        return self._decide(path)

    def _decide(self, path: str) -> str:
        template = _DIGITS.sub("<n>", path)
        folded = template != path and template in self._folded
        if template != path and not folded:
            count = self._per_template.get(template, 0) + 1
            if count > MAX_PATHS_PER_TEMPLATE:
                self._folded.add(template)
                self._warn(path, template)
                folded = True
            else:
                self._per_template[template] = count
        out = template if folded else path
        if folded:
            self._ledger.add(PHASE_PATH_FOLDED)  # once per distinct path
        if len(self._paths) < MAX_PATHS:
            self._paths[path] = out
        return out

    def _warn(self, path: str, template: str) -> None:
        if self._warned:
            return
        self._warned = True
        _logger.warning(
            "memspan: phase names embed a number (%r, and %d others like it): each would be "
            "its own metric series. Put the number in an attribute instead, e.g. "
            "memspan.phase(\"step\", step=i); further paths like it are recorded in the "
            "histograms as %r (counted in %s{%s=%s})",
            path, MAX_PATHS_PER_TEMPLATE, template, names.RECORDER_DROPPED, names.DROP_REASON,
            PHASE_PATH_FOLDED)
