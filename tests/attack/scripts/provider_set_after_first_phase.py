import memspan, os, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

@memspan.phase("load")          # decorated at import time (creates the default tracker)
def load():
    return 1

class FileExp(SpanExporter):
    def export(self, spans):
        with open(sys.argv[1], "a") as f:
            for s in spans: f.write(s.name + "\n")
        return SpanExportResult.SUCCESS

def main():
    tp = TracerProvider(); tp.add_span_processor(SimpleSpanProcessor(FileExp()))
    trace.set_tracer_provider(tp)
    with memspan.phase("train"):
        load()
        for i in range(3):
            with memspan.phase("step", step=i):
                pass
main()
