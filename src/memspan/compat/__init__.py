"""Compatibility with the tools memspan grew out of (Stormlog's phase runtime and OOM recorder)."""
