"""The protocol every memory source implements, and the values sources hand the sampler.

Invariants every implementation keeps:

- ``sample()`` never initialises CUDA and never synchronises a device. It may raise (the
  sampler marks the source degraded and counts the failure); it must not block for long.
- A figure the source cannot measure is left out, never reported as zero.
- The real library is injected at the constructor (torch functions, the ``pynvml`` module,
  ``/proc`` and ``/sys`` roots), so tests drive the same code path with fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from memspan import names
from memspan.metric_catalogue import Cadence, MetricRow

AttributeItems = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one metric series: the metric name and its (sorted) attributes."""

    metric: str
    value: int | float
    attributes: AttributeItems = ()


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """Whether a source can read anything here, and why not when it cannot."""

    available: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device a source measures. ``key`` is the memspan device name (``cuda:0``)."""

    key: str
    hw_id: str
    name: str = ""
    vendor: str = ""
    pci_bus_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def attributes(self) -> AttributeItems:
        items = [(names.HW_ID, self.hw_id)]
        if self.name:
            items.append((names.HW_NAME, self.name))
        if self.vendor:
            items.append((names.HW_VENDOR, self.vendor))
        return tuple(sorted(items))


@runtime_checkable
class MemorySource(Protocol):
    """What the sampler needs from a source of memory figures.

    ``metrics`` are the catalogue rows of every metric the source reports (see
    :mod:`memspan.metric_catalogue`); ``cadence`` says whether the sampler asks it every tick
    or every ``slow_interval`` (both are class attributes of the implementations).
    """

    name: str
    cadence: Cadence
    metrics: tuple[MetricRow, ...]

    def probe(self) -> SourceStatus:
        """Check once whether this source can measure anything on this host."""
        ...

    def devices(self) -> Sequence[DeviceIdentity]:
        """The devices the source currently measures (empty for host-level sources)."""
        ...

    def sample(self) -> Sequence[Reading]:
        """Read current figures. Called from the sampler thread only."""
        ...

    def capabilities(self) -> frozenset[str]:
        """Names of the figures this source can report."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready, detailed picture for a dump bundle (may do more I/O than sample)."""
        ...

    def after_fork(self) -> None:
        """Drop handles inherited from the parent; the next sample starts clean."""
        ...

    def close(self) -> None:
        """Release handles. Idempotent."""
        ...
