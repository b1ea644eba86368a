"""Where telemetry goes when the user configured nowhere: bounded OTLP JSON-lines files."""

from memspan.export.bounded_file import BoundedLineFile
from memspan.export.embedded import EmbeddedOutput, build_embedded_output

__all__ = ["BoundedLineFile", "EmbeddedOutput", "build_embedded_output"]
