"""OTel metric names as Prometheus shows them (the OTel compatibility rules).

Dots become underscores, the unit is appended (``By`` -> ``_bytes``, ``s`` -> ``_seconds``;
``1`` adds nothing), counters get ``_total``, histograms ``_bucket``/``_sum``/``_count``.
The Prometheus scrape test checks these names against a real Prometheus.
"""

from __future__ import annotations

import re

from memspan.instruments import METRIC_CATALOGUE

_UNITS = {"By": "bytes", "s": "seconds", "1": ""}


def prometheus_names(name: str, kind: str, unit: str) -> list[str]:
    base = re.sub(r"[^a-zA-Z0-9:]+", "_", name)
    suffix = _UNITS[unit]
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    if kind == "counter":
        return [f"{base}_total"]
    if kind == "histogram":
        return [f"{base}_bucket", f"{base}_sum", f"{base}_count"]
    return [base]


def emitted_prometheus_names() -> dict[str, str]:
    """Prometheus name -> the OTel metric it comes from, for everything memspan emits."""
    return {prom: name for name, kind, unit in METRIC_CATALOGUE
            for prom in prometheus_names(name, kind, unit)}
