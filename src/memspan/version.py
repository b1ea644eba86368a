"""The package version; the instrumentation scope reports it."""

__version__ = "0.1.0"
