"""The thresholds behind leak and plateau verdicts, in one object, with validated overrides.

A bad ``MEMSPAN_LEAK_*``/``MEMSPAN_PLATEAU_*`` value is a :class:`~memspan.config.ConfigError`
naming the variable and the accepted values: never a crash at import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from memspan.config import ConfigError

MIB = 1 << 20


@dataclass(frozen=True)
class LeakThresholds:
    """When a phase path is leaking, on a plateau, or leak-free.

    - ``min_runs``: runs of a path needed before any verdict but ``leak-free``.
    - ``slope_bytes_per_run``: least-squares growth of the end-of-run memory above which a
      path leaks...
    - ``min_r2``: ...provided the straight line explains the growth this well (0..1).
    - ``plateau_bytes``: memory still held after the last run, compared with before the
      first, above which a path that does not leak is on a plateau.
    """

    min_runs: int = 5
    slope_bytes_per_run: float = 1 * MIB
    min_r2: float = 0.8
    plateau_bytes: int = 64 * MIB

    def __post_init__(self) -> None:
        if not isinstance(self.min_runs, int) or self.min_runs < 3:
            raise ConfigError(f"min_runs={self.min_runs!r} is out of range; accepted: an integer >= 3")
        if not self.slope_bytes_per_run > 0:
            raise ConfigError(f"slope_bytes_per_run={self.slope_bytes_per_run!r} is out of range; "
                              "accepted: a number of bytes > 0")
        if not 0.0 <= self.min_r2 <= 1.0:
            raise ConfigError(f"min_r2={self.min_r2!r} is out of range; accepted: a number in [0, 1]")
        if not isinstance(self.plateau_bytes, int) or self.plateau_bytes <= 0:
            raise ConfigError(f"plateau_bytes={self.plateau_bytes!r} is out of range; "
                              "accepted: an integer number of bytes > 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LeakThresholds:
        env = os.environ if environ is None else environ
        values: dict[str, int | float] = {}
        for field, variable, kind in (
            ("min_runs", "MEMSPAN_LEAK_MIN_RUNS", int),
            ("slope_bytes_per_run", "MEMSPAN_LEAK_SLOPE_BYTES", float),
            ("min_r2", "MEMSPAN_LEAK_MIN_R2", float),
            ("plateau_bytes", "MEMSPAN_PLATEAU_BYTES", int),
        ):
            raw = env.get(variable)
            if raw is None or not raw.strip():
                continue
            try:
                values[field] = kind(raw.strip())
            except ValueError:
                noun = "an integer" if kind is int else "a number"
                raise ConfigError(f"{variable}={raw!r} is not {noun}; "
                                  f"accepted: {_ACCEPTED[field]}") from None
            try:
                cls(**{field: values[field]})  # type: ignore[arg-type]
            except ConfigError:
                raise ConfigError(
                    f"{variable}={raw!r} is out of range; accepted: {_ACCEPTED[field]}"
                ) from None
        return cls(**values)  # type: ignore[arg-type]


_ACCEPTED = {
    "min_runs": "an integer >= 3",
    "slope_bytes_per_run": "a number of bytes > 0",
    "min_r2": "a number in [0, 1]",
    "plateau_bytes": "an integer number of bytes > 0",
}
