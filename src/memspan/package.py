"""What ``opentelemetry-instrument`` checks before loading memspan.

Nothing: memspan loads on any host and degrades to host memory without torch or NVML.
"""

_instruments: tuple[str, ...] = ()
_supports_metrics = True
