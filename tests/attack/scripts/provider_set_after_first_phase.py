"""The default tracker is created at import (a decorator); the app installs its provider later."""

import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import memspan


@memspan.phase("load")  # decorated at import time (creates the default tracker)
def load() -> int:
    return 1


class FileExporter(SpanExporter):
    def export(self, spans):  # type: ignore[no-untyped-def]
        with open(sys.argv[1], "a") as out:
            for span in spans:
                out.write(span.name + "\n")
        return SpanExportResult.SUCCESS


def main() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)
    with memspan.phase("train"):
        load()
        for i in range(3):
            with memspan.phase("step", step=i):
                pass


main()
