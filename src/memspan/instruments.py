"""The observable instruments of the telemetry contract, fed by the sampler's state.

Invariants: callbacks do no I/O (they read :class:`~memspan.sampling.SamplerState`); once
:meth:`MemoryInstruments.disable` is called every callback yields nothing, because the SDK
cannot unregister observable instruments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from memspan import names
from memspan.drops import DropLedger
from memspan.sampling.state import SamplerState

_BYTES = "By"

# (name, kind, unit, description); kind: udc = up-down counter, gauge, counter
_SAMPLED = (
    (names.GPU_MEMORY_USAGE, "udc", _BYTES, "GPU memory in use (NVML)"),
    (names.GPU_MEMORY_LIMIT, "udc", _BYTES, "GPU memory capacity (NVML)"),
    (names.GPU_MEMORY_UTILIZATION, "gauge", "1", "Fraction of GPU memory in use (NVML)"),
    (names.GPU_UTILIZATION, "gauge", "1", "Fraction of time the GPU was busy (NVML)"),
    (names.GPU_PROCESS_MEMORY_USAGE, "udc", _BYTES, "GPU memory this process uses (NVML)"),
    (names.TORCH_ALLOCATED, "udc", _BYTES, "Bytes allocated to tensors by the torch allocator"),
    (names.TORCH_RESERVED, "udc", _BYTES, "Bytes reserved by the torch caching allocator"),
    (names.TORCH_ACTIVE, "udc", _BYTES, "Bytes in active allocator blocks"),
    (names.TORCH_INACTIVE_SPLIT, "udc", _BYTES, "Bytes in inactive, non-releasable split blocks"),
    (names.TORCH_ALLOC_RETRIES, "counter", "1", "Allocator retries after a cache flush"),
    (names.TORCH_OOMS, "counter", "1", "Out-of-memory errors raised by the torch allocator"),
    (names.PROCESS_MEMORY_USAGE, "udc", _BYTES, "Resident set size of this process"),
    (names.CGROUP_MEMORY_USAGE, "udc", _BYTES, "Memory charged to this process's cgroup"),
    (names.CGROUP_MEMORY_LIMIT, "udc", _BYTES, "Memory limit of this process's cgroup"),
    (names.CGROUP_OOM_KILLS, "counter", "1", "Processes the kernel OOM-killed in this cgroup"),
)

_WINDOW_PEAKS = (
    (names.TORCH_ALLOCATED_WINDOW_PEAK, "Highest allocated bytes since the previous export"),
    (names.TORCH_RESERVED_WINDOW_PEAK, "Highest reserved bytes since the previous export"),
    (names.PROCESS_MEMORY_WINDOW_PEAK, "Highest RSS since the previous export"),
)


#: Every metric memspan emits as (name, kind, unit); kind is one of "udc" (up-down counter),
#: "gauge", "counter" or "histogram". Docs and the dashboard consistency test read it.
METRIC_CATALOGUE: tuple[tuple[str, str, str], ...] = (
    *((name, kind, unit) for name, kind, unit, _ in _SAMPLED),
    *((name, "gauge", _BYTES) for name, _ in _WINDOW_PEAKS),
    (names.RECORDER_DROPPED, "counter", "1"),
    (names.PHASE_DURATION, "histogram", "s"),
    (names.PHASE_MEMORY_PEAK, "histogram", _BYTES),
    (names.OOM_COUNT, "counter", "1"),
)


class MemoryInstruments:
    """Registers every sampled instrument plus the drop counter on one meter."""

    def __init__(
        self,
        meter: Meter,
        state_provider: Callable[[], SamplerState],
        ledger: DropLedger,
        *,
        emit_rss: bool = True,
        before_collect: Callable[[], object] | None = None,
    ) -> None:
        self._state = state_provider
        self._before_collect = before_collect
        self._ledger = ledger
        self._enabled = True
        self.names: list[str] = []
        for name, kind, unit, description in _SAMPLED:
            if name == names.PROCESS_MEMORY_USAGE and not emit_rss:
                continue
            callback = self._latest_callback(name)
            if kind == "udc":
                meter.create_observable_up_down_counter(name, [callback], unit, description)
            elif kind == "gauge":
                meter.create_observable_gauge(name, [callback], unit, description)
            else:
                meter.create_observable_counter(name, [callback], unit, description)
            self.names.append(name)
        for name, description in _WINDOW_PEAKS:
            meter.create_observable_gauge(name, [self._peak_callback(name)], _BYTES, description)
            self.names.append(name)
        meter.create_observable_counter(
            names.RECORDER_DROPPED,
            [self._drops],
            "1",
            "Telemetry memspan discarded to stay bounded, by reason",
        )
        self.names.append(names.RECORDER_DROPPED)

    def disable(self) -> None:
        self._enabled = False

    def _latest_callback(self, metric: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if not self._enabled:
                return []
            return [Observation(v, dict(a)) for v, a in self._state().latest(metric)]

        return callback

    def _peak_callback(self, metric: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if not self._enabled:
                return []
            return [Observation(v, dict(a)) for v, a in self._state().take_window_peaks(metric)]

        return callback

    def _drops(self, options: CallbackOptions) -> Iterable[Observation]:
        # Collection runs every observable callback before reading synchronous instruments:
        # draining pending phase histograms here puts them in this collection.
        if self._before_collect is not None:
            self._before_collect()
        if not self._enabled:
            return []
        counts = self._ledger.snapshot()
        if not counts:  # the counter exists from the start, at zero, for increase() alerts
            return [Observation(0, {})]
        return [
            Observation(count, {names.DROP_REASON: reason})
            for reason, count in sorted(counts.items())
        ]
