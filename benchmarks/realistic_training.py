"""A realistic CPU training job on memspan's default path, and on OTLP to a loopback receiver.

The job: a small transformer (``nn.TransformerEncoder``, 2 layers, d_model 64, 4 heads,
feed-forward 128, sequences of 32 tokens, batches of 8; about 15 ms a step on the 2-core
benchmark machine), a real ``DataLoader(num_workers=2)`` over a synthetic ``Dataset``, AdamW.
``torch.set_num_threads(1)`` by default (a third argument changes it): the second core is
left to the DataLoader workers and to the background threads, as one would on 2 cores. With
2 OpenMP threads, another process taking a core for a moment makes steps 3-50x slower
(OpenMP's barriers spin while their other thread is descheduled), and this shared machine
then measures noise, not a 3 % effect; ``... 200 3 2`` measures that setting on a quiet one.
Every step is 5 phases: ``step`` (the trace root, attribute ``step=i``) around ``data``
(fetching the batch), ``forward``, ``backward`` and ``optimizer``.

Variants, each run in a process of its own (``memspan.configure()`` is process-global),
forked from a process that imported torch once (importing torch takes most of a run's time
here; memspan is imported only in the memspan children):

- ``uninstrumented``: the same loop with no-op phases; memspan is never imported;
- ``memspan_files``: ``memspan.configure()`` with no ``OTEL_*`` variable, i.e. the embedded
  default a new user gets (OTLP JSON lines in ``MEMSPAN_OUTPUT_DIR``, a temporary directory),
  default settings otherwise (``MEMSPAN_QUIET=1``);
- ``memspan_otlp``: ``memspan.configure()`` with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at
  a minimal OTLP/HTTP receiver this script runs on 127.0.0.1 (``http/protobuf``);
- ``otel_files`` / ``otel_otlp`` (for reference): the same 5 phases as plain OpenTelemetry
  SDK spans (``BatchSpanProcessor``) into the SDK's OTLP JSON file exporter / the OTLP HTTP
  exporter to the same receiver: what OpenTelemetry alone costs;
- ``uninstrumented_again``: an A/A control, the uninstrumented job once more: its
  "overhead" is the noise floor of the figures (this machine's speed drifts by 10-30 %
  within seconds, so a few rounds cannot resolve a 3 % effect; more rounds narrow it).

Every variant runs once per round; rounds alternate the variants (the order rotates) so the
machine's noise hits all alike, and each run waits (up to 10 s) for the machine to be quiet.
Per run: the median and the mean wall time of a step over the measured steps after the
warm-up (the warm-up ends with a flush of the telemetry); the process CPU per step
(``getrusage(RUSAGE_SELF)``: every thread of the process, not the DataLoader workers) from
the first measured step until the telemetry of the measured steps is flushed, so each
variant pays for the background work it caused (the final flush runs partly on the main
thread; it is charged to the CPU figures, not to the step times); the CPU of the main
thread and of each background thread. Times are medians over the rounds; a wall-time
overhead is the median over the rounds of that round's ratio to the uninstrumented run.

The wall-time overheads carry the machine's drift (the A/A row shows how much), so each run
also measures its telemetry directly: the wall time its caller's thread spends entering and
leaving phases (beyond the same wrapper around no-op phases), and the CPU of its telemetry
threads and of the final flush. "overhead, direct" is their sum over the run's own step
time: drift cancels, and it is an upper bound of the telemetry's own cost when its
background work overlaps the training on the other core (it misses indirect costs such as
GIL hand-offs and caches, which only the wall-time rows can show, on a quiet machine).
Telemetry is checked to have flowed: every phase span of every step in ``traces.jsonl``
(files) or at the receiver (OTLP).

Target (issue 19): memspan adds < 3 % to the step time, on the default path and on OTLP
(checked on the wall-time and on the direct overheads). For scale: on this machine a bare
OpenTelemetry SDK span costs 55-70 us on the caller's thread, so 5 of them are already about
2-4 % of a 15 ms step (the ``otel_*`` rows). The script reports and exits 0 when a target
is missed.

    .venv/bin/python benchmarks/realistic_training.py [steps] [rounds] [torch_threads]
        (defaults 200 4 1: about 2.5 minutes; 30 warm-up steps before the measured ones;
        fewer than ~100 steps (500 spans) see no span export inside the measured window)
    .venv/bin/python benchmarks/realistic_training.py --profile [steps] [torch_threads]

``--profile`` runs the default-path variant once under py-spy (``pip install py-spy``;
attached after the warm-up, detached after the measured steps and their flush; without
py-spy, a ``sys._current_frames`` sampler thread, rougher) and prints where the CPU goes,
by thread and by kind of work (span building, OTLP-JSON encoding, file writes, sampler,
metrics...), with each thread's measured CPU; it writes nothing to ``results.json``.
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

VARIANTS = ("uninstrumented", "memspan_files", "memspan_otlp", "otel_files", "otel_otlp",
            "uninstrumented_again")
LABELS = {
    "uninstrumented": "uninstrumented",
    "uninstrumented_again": "A/A control: uninstrumented again",
    "memspan_files": "memspan default (local files)",
    "memspan_otlp": "memspan, OTLP/HTTP to loopback",
    "otel_files": "OTel SDK spans, OTLP JSON file",
    "otel_otlp": "OTel SDK spans, OTLP/HTTP to loopback",
}
PHASES = ("step", "data", "forward", "backward", "optimizer")
WARMUP = 30
BATCH, SEQUENCE, VOCABULARY, CLASSES = 8, 32, 1000, 10
D_MODEL, HEADS, FEED_FORWARD, LAYERS = 64, 4, 128, 2
TARGET_PERCENT = 3.0


# ---------------------------------------------------------------------------------------
# The loopback OTLP/HTTP receiver (runs in the parent process)
# ---------------------------------------------------------------------------------------

class Receiver:
    """A minimal OTLP/HTTP receiver: 200 and an empty protobuf body to every POST; the
    bodies of ``/v1/traces`` are kept and decoded after the run (not while it is measured)."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = defaultdict(list)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a collector does

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding", "") == "gzip":
                    body = gzip.decompress(body)
                with receiver._lock:
                    receiver.bodies[self.path].append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")  # an empty Export*ServiceResponse
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="otlp-receiver",
                         daemon=True).start()

    def take(self) -> dict[str, Any]:
        """Span names received since the last call, and how many metric exports came."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
        with self._lock:
            bodies, self.bodies = self.bodies, defaultdict(list)
        names: Counter[str] = Counter()
        for body in bodies.get("/v1/traces", []):
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    names.update(span.name for span in scope_spans.spans)
        return {"spans": dict(names), "trace_posts": len(bodies.get("/v1/traces", [])),
                "metric_posts": len(bodies.get("/v1/metrics", []))}

    def close(self) -> None:
        self.server.shutdown()


# ---------------------------------------------------------------------------------------
# The child: one variant's training run
# ---------------------------------------------------------------------------------------

def build_job(threads: int) -> tuple[Any, Any, Any, Any, Any]:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class Tokens(Dataset):  # type: ignore[type-arg]
        """Synthetic token sequences and labels, made once (cheap to fetch)."""

        def __init__(self, length: int) -> None:
            generator = torch.Generator().manual_seed(1)
            self.tokens = torch.randint(0, VOCABULARY, (length, SEQUENCE), generator=generator)
            self.labels = torch.randint(0, CLASSES, (length,), generator=generator)

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, index: int) -> tuple[Any, Any]:
            return self.tokens[index], self.labels[index]

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(VOCABULARY, D_MODEL)
            layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FEED_FORWARD, dropout=0.1,
                                               batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
            self.head = nn.Linear(D_MODEL, CLASSES)

        def forward(self, tokens: Any) -> Any:
            return self.head(self.encoder(self.embedding(tokens)).mean(dim=1))

    model = Classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, optimizer, nn.CrossEntropyLoss(), Tokens, DataLoader


class Telemetry:
    """The variant's phases, its flush and its shutdown."""

    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.output_dir = os.environ.get("MEMSPAN_OUTPUT_DIR", "")
        self._provider: Any = None
        self._tracker: Any = None
        self.phase: Callable[..., Any]
        if variant.startswith("uninstrumented"):
            self.phase = lambda name, **attributes: nullcontext()
        elif variant.startswith("memspan"):
            import memspan

            self._tracker = memspan.configure()
            self.phase = memspan.phase
        else:
            self.phase = self._otel_phases()

    def _otel_phases(self) -> Any:
        from opentelemetry.context import Context
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if self.variant == "otel_files":
            from opentelemetry.exporter.otlp.json.file.trace_exporter import FileSpanExporter

            exporter: Any = FileSpanExporter(os.path.join(self.output_dir, "traces.jsonl"))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces
        self._provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer = self._provider.get_tracer("bench")
        root = Context()

        def phase(name: str, **attributes: Any) -> Any:
            return tracer.start_as_current_span(name, context=root if name == "step" else None,
                                                attributes=attributes or None)

        return phase

    def flush(self) -> None:
        if self._tracker is not None:
            self._tracker.flush_providers(30.0)
        elif self._provider is not None:
            self._provider.force_flush(30_000)

    def shutdown(self) -> None:
        if self._tracker is not None:
            import memspan

            memspan.shutdown(30.0)
        elif self._provider is not None:
            self._provider.shutdown()


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of each Python thread of this process, by name."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            clock = time.pthread_getcpuclockid(thread.ident)
            seconds = time.clock_gettime(clock)
        except (OSError, ProcessLookupError):
            continue
        name = "main" if thread is threading.main_thread() else thread.name
        out[name] = out.get(name, 0.0) + seconds
    return out


class Timed:
    """Wraps a variant's phases to add up the wall time spent entering and leaving them on
    the caller's thread (the same wrapper around the uninstrumented no-op phases gives the
    wrapper's own cost, which is subtracted)."""

    __slots__ = ("_scope",)
    seconds = 0.0

    def __init__(self, scope: Any) -> None:
        self._scope = scope

    @classmethod
    def around(cls, phase: Callable[..., Any]) -> Callable[..., Any]:
        def timed(name: str, **attributes: Any) -> Timed:
            started = time.perf_counter()
            scope = cls(phase(name, **attributes))
            cls.seconds += time.perf_counter() - started
            return scope

        return timed

    def __enter__(self) -> Any:
        started = time.perf_counter()
        entered = self._scope.__enter__()
        Timed.seconds += time.perf_counter() - started
        return entered

    def __exit__(self, *exc_info: Any) -> Any:
        started = time.perf_counter()
        suppressed = self._scope.__exit__(*exc_info)
        Timed.seconds += time.perf_counter() - started
        return suppressed


class GcWatch:
    """Garbage collections while it watches: per generation, how many and their wall time."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count[info["generation"]] += 1
            self.seconds[info["generation"]] += time.perf_counter() - self._started

    def stop(self) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self, steps: int) -> dict[str, Any]:
        return {"collections": self.count,
                "ms_per_step": [seconds / steps * 1e3 for seconds in self.seconds]}


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads; children not included
    return usage.ru_utime + usage.ru_stime


def file_spans(directory: str) -> Iterator[dict[str, Any]]:
    """Every span of the OTLP JSON lines in ``directory``'s traces.jsonl."""
    path = Path(directory, "traces.jsonl")
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        for resource_spans in json.loads(line).get("resourceSpans", []):
            for scope_spans in resource_spans.get("scopeSpans", []):
                yield from scope_spans.get("spans", [])


def file_span_names(directory: str) -> dict[str, int]:
    return dict(Counter(span["name"] for span in file_spans(directory)))


def file_span_attribute_counts(directory: str) -> dict[str, float]:
    """Mean attributes per span, by name (what the encoding pays for)."""
    counts: dict[str, list[int]] = defaultdict(list)
    for span in file_spans(directory):
        counts[span["name"]].append(len(span.get("attributes", [])))
    return {name: statistics.mean(values) for name, values in counts.items()}


def run_child(variant: str, steps: int, threads: int, profiler: str = "") -> dict[str, Any]:
    """One run; ``profiler``: "inproc" samples stacks in this process, "py-spy" waits on
    stdin after the warm-up (the parent attaches py-spy) and after the measured window."""
    model, optimizer, loss_fn, Tokens, DataLoader = build_job(threads)
    telemetry = Telemetry(variant)
    phase = Timed.around(telemetry.phase)
    loader = DataLoader(Tokens(BATCH * (WARMUP + steps)), batch_size=BATCH, shuffle=True,
                        num_workers=2)
    batches = [iter(loader)]  # one iterator for the whole run (its 2 workers)

    def one_step(index: int) -> None:
        with phase("step", step=index):
            with phase("data"):
                tokens, labels = next(batches[0])
            with phase("forward"):
                loss = loss_fn(model(tokens), labels)
            with phase("backward"):
                loss.backward()
            with phase("optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

    for index in range(WARMUP):
        one_step(index)
    telemetry.flush()
    if profiler == "py-spy":
        print("READY", flush=True)
        sys.stdin.readline()
    sampler = StackSampler() if profiler == "inproc" else None
    collections = GcWatch()
    times = []
    Timed.seconds = 0.0
    threads_before = thread_cpu_s()
    cpu_before = process_cpu_s()
    started = time.perf_counter()
    for index in range(WARMUP, WARMUP + steps):
        step_started = time.perf_counter()
        one_step(index)
        times.append(time.perf_counter() - step_started)
    elapsed = time.perf_counter() - started
    caller_s = Timed.seconds
    cpu_loop = process_cpu_s() - cpu_before
    flush_started = time.thread_time()
    telemetry.flush()
    flush_main_s = time.thread_time() - flush_started
    cpu_total = process_cpu_s() - cpu_before
    threads_after = thread_cpu_s()
    collections.stop()
    stacks = sampler.stop() if sampler is not None else None
    if profiler == "py-spy":
        print("MEASURED", flush=True)
        sys.stdin.readline()
    batches.clear()  # the workers exit
    telemetry.shutdown()
    per_thread = {name: (threads_after[name] - threads_before.get(name, 0.0)) / steps * 1e3
                  for name in threads_after}
    result: dict[str, Any] = {
        "variant": variant,
        "median_ms": statistics.median(times) * 1e3,
        "mean_ms": elapsed / steps * 1e3,
        "cpu_loop_ms": cpu_loop / steps * 1e3,
        "cpu_ms": cpu_total / steps * 1e3,
        "threads_ms": per_thread,
        "caller_ms": caller_s / steps * 1e3,
        "flush_main_ms": flush_main_s / steps * 1e3,
        "background_ms": sum(ms for name, ms in per_thread.items()
                             if name not in ("main", "QueueFeederThread")),
        "steps": steps,
        "warmup": WARMUP,
        "torch_threads": threads,
        "gc": collections.summary(steps),
    }
    if variant.endswith("_files") and telemetry.output_dir:
        result["spans"] = file_span_names(telemetry.output_dir)
        result["attributes"] = file_span_attribute_counts(telemetry.output_dir)
        result["metrics_file"] = Path(telemetry.output_dir, "metrics.jsonl").exists()
    if stacks is not None:
        result["stacks"] = stacks
    return result


# ---------------------------------------------------------------------------------------
# --profile: where the CPU goes, by thread and by kind of work
# ---------------------------------------------------------------------------------------

#: a stack whose innermost frame is one of these is a thread waiting, not working
IDLE_LEAVES = ("/threading.py:", "/selectors.py:", "/queue.py:get", "/socket.py:",
               "/ssl.py:", "realistic_training.py:_run")
#: (category, substrings of "path:function"); the first category with a frame on the stack wins
CATEGORIES = (
    ("OTLP-JSON encoding", ("/opentelemetry/exporter/otlp/json/common", "/opentelemetry/proto_json/",
                            "/json/encoder.py:", "/json/__init__.py:", "memspan/export/span_json.py:",
                            "orjson")),
    ("OTLP-protobuf encoding", ("/opentelemetry/exporter/otlp/proto/common", "/google/protobuf/",
                                "/opentelemetry/proto/")),
    ("HTTP send", ("/requests/", "/urllib3/", "/http/client.py:")),
    ("file writes", ("memspan/export/bounded_file.py:", "/otlp/json/file/_internal.py:")),
    ("span building (memspan)", ("memspan/phases/span_build.py:", "memspan/phases/record.py:")),
    ("histograms, ring, leak watch", ("memspan/phases/histograms.py:", "memspan/oom/",
                                      "memspan/analysis/")),
    ("phase enter/exit (caller)", ("memspan/phases/figures.py:", "memspan/phases/scope.py:",
                                   "memspan/phases/core.py:", "memspan/tracker.py:",
                                   "memspan/__init__.py:")),
    ("span processor (SDK, counting)", ("/opentelemetry/sdk/trace/export", "memspan/export/",
                                        "/opentelemetry/sdk/_shared_internal")),
    ("export worker (queue, delivery)", ("memspan/phases/export.py:",)),
    ("sampler", ("memspan/sampling/", "memspan/sources/")),
    ("metrics SDK (collect, aggregate)", ("/opentelemetry/sdk/metrics/",)),
    ("SDK span start/end", ("/opentelemetry/sdk/trace/",)),
    ("OTel API, context", ("/opentelemetry/",)),
    ("DataLoader", ("/torch/utils/data/", "/multiprocessing/")),
    ("torch", ("/torch/",)),
)
IDLE = "idle (waiting)"

Stacks = dict[str, Counter[tuple[str, ...]]]


def categorize(stack: tuple[str, ...]) -> str:
    """``stack``: "path:function" from the outermost frame to the innermost."""
    if not stack or any(needle in stack[-1] for needle in IDLE_LEAVES):
        return IDLE
    for name, needles in CATEGORIES:
        if any(needle in key for key in stack for needle in needles):
            return name
    return "other"


def short(key: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in key:
            key = key.split(marker, 1)[1]
            return key.split("/", 1)[1] if marker == "/lib/python3" else key
    return key.rsplit("/", 1)[-1]


class StackSampler:
    """The fallback profiler (no py-spy): every other thread's Python stack every
    ``interval_s`` through ``sys._current_frames``. It needs the GIL, so it sees threads that
    hold it less often than they run, and it costs CPU of its own: shares are rough."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.stacks: Stacks = defaultdict(Counter)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="StackSampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        own = threading.get_ident()
        while not self._stop.wait(self.interval_s):
            names = {t.ident: ("main" if t is threading.main_thread() else t.name)
                     for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == own:
                    continue
                stack = []
                walker: Any = frame
                while walker is not None:
                    stack.append(f"{walker.f_code.co_filename}:{walker.f_code.co_name}")
                    walker = walker.f_back
                self.stacks[names.get(ident, str(ident))][tuple(reversed(stack))] += 1

    def stop(self) -> list[Any]:
        self._stop.set()
        self._thread.join()
        return [[thread, list(stack), count] for thread, counter in self.stacks.items()
                for stack, count in counter.items()]


_PY_SPY_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*):(?P<line>\d+)\)$")


def read_py_spy(path: str) -> Stacks:
    """py-spy's ``--format raw --threads --full-filenames`` output, as stacks by thread."""
    stacks: Stacks = defaultdict(Counter)
    for line in Path(path).read_text().splitlines():
        body, _, count = line.rpartition(" ")
        frames = body.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread (") else "?"
        stack = []
        for frame in frames[1:]:
            match = _PY_SPY_FRAME.match(frame)
            if match:
                stack.append(f"{match['path']}:{match['function'].rsplit('.', 1)[-1]}")
        stacks["main" if thread == "MainThread" else thread][tuple(stack)] += int(count)
    return stacks


def print_profile(result: dict[str, Any], stacks: Stacks, profiler: str) -> None:
    steps = result["steps"]
    cpu = result["threads_ms"]
    print(f"\n== realistic_training --profile ({profiler}): memspan default path, {steps} "
          f"measured steps, {result['torch_threads']} torch threads ==")
    print(f"median step {result['median_ms']:.2f} ms, mean {result['mean_ms']:.2f} ms, "
          f"process CPU {result['cpu_ms']:.2f} ms/step (the profiler's own cost included)")
    print("CPU per thread, ms/step: " + ", ".join(
        f"{name} {ms:.3f}" for name, ms in sorted(cpu.items(), key=lambda kv: -kv[1])))
    collections = result["gc"]
    print(f"garbage collections gen 0/1/2: {'/'.join(map(str, collections['collections']))}, "
          f"{sum(collections['ms_per_step']) * steps:.0f} ms in all (a gen-2 pause lands in "
          "whichever thread allocated)")
    print("attributes per span: " + ", ".join(
        f"{name} {count:.0f}" for name, count in result.get("attributes", {}).items()))
    memspan_ms: dict[str, float] = {}
    order = sorted(stacks, key=lambda t: (t != "main", -sum(stacks[t].values())))
    for thread in order:
        counter = stacks[thread]
        by_category: Counter[str] = Counter()
        functions: Counter[str] = Counter()
        leaves: Counter[str] = Counter()
        for stack, count in counter.items():
            category = categorize(stack)
            by_category[category] += count
            if category == IDLE:
                continue
            leaves[short(stack[-1])] += count
            for key in set(stack):
                if "memspan/" in key or "/opentelemetry/" in key:
                    functions[short(key)] += count
        busy = sum(by_category.values()) - by_category[IDLE]
        if busy == 0:
            continue
        thread_ms = cpu.get(thread, 0.0)
        print(f"\n-- thread {thread}: CPU {thread_ms:.3f} ms/step; {busy} busy samples "
              f"({by_category[IDLE]} idle); by kind (share of busy, est. ms/step):")
        for category, count in by_category.most_common():
            if category == IDLE:
                continue
            share = count / busy
            print(f"   {category:<36}{share * 100:6.1f} %  {share * thread_ms:7.3f}")
            if category not in ("torch", "DataLoader", "other"):
                memspan_ms[thread] = memspan_ms.get(thread, 0.0) + share * thread_ms
        top = functions.most_common(14) if thread == "main" else functions.most_common(10)
        if top:
            print("   memspan/OTel functions on the stack (inclusive share of busy):")
            for key, count in top:
                print(f"     {count / busy * 100:6.1f} %  {key}")
        if thread != "main":
            print("   innermost functions (self share of busy):")
            for key, count in leaves.most_common(8):
                print(f"     {count / busy * 100:6.1f} %  {key}")
    caller = memspan_ms.pop("main", 0.0)
    background = sum(ms for name, ms in memspan_ms.items() if name != "StackSampler")
    print(f"\nestimated telemetry CPU per step: caller's thread {caller:.3f} ms, background "
          f"threads {background:.3f} ms, of a {result['median_ms']:.2f} ms step")


def profile_main() -> int:
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or \
        shutil.which("py-spy")
    with tempfile.TemporaryDirectory(prefix="memspan-profile-") as scratch:
        env = child_environment("memspan_files", scratch, "")
        if py_spy is None:
            result = spawn("memspan_files", steps, threads, env, profile="inproc")
            stacks: Stacks = defaultdict(Counter)
            for thread, stack, count in result.pop("stacks"):
                stacks[thread][tuple(stack)] += count
            print_profile(result, stacks, "sys._current_frames sampler, 2 ms")
            return 0
        raw = os.path.join(scratch, "py-spy.txt")
        command = [sys.executable, str(Path(__file__).resolve()), "--child", "memspan_files",
                   str(steps), str(threads), "--profiler=py-spy"]
        child = subprocess.Popen(command, env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().strip() == "READY", "the child did not start"
        spy = subprocess.Popen([py_spy, "record", "--pid", str(child.pid), "--nonblocking",
                                "--threads", "--full-filenames", "--format", "raw",
                                "--rate", "1000", "--output", raw],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # py-spy attaches
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "MEASURED", "the child did not finish"
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
        child.stdin.write("go\n")
        child.stdin.close()
        output = child.stdout.read()
        child.wait(120)
        result = next(json.loads(line[len("RESULT "):]) for line in output.splitlines()
                      if line.startswith("RESULT "))
        print_profile(result, read_py_spy(raw), "py-spy, 1000 Hz, non-blocking")
    return 0


# ---------------------------------------------------------------------------------------
# The parent: alternating rounds, the table
# ---------------------------------------------------------------------------------------

def child_environment(variant: str, output_dir: str, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MEMSPAN_"))}
    env["MEMSPAN_QUIET"] = "1"
    env["MEMSPAN_OUTPUT_DIR"] = output_dir
    if variant.endswith("_otlp"):
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    return env


def machine_busy_s() -> float | None:
    """CPU seconds every core of the machine has been busy since boot (``/proc/stat``)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(value) for value in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the children and their workers
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(limit_s: float = 10.0, busy_cores: float = 0.3) -> float:
    """Wait (up to ``limit_s``) until other processes use less than ``busy_cores`` of the
    machine, so a run does not start in the middle of someone else's burst; returns the
    load last seen, in cores."""
    deadline = time.monotonic() + limit_s
    while True:
        before, started = machine_busy_s(), time.monotonic()
        time.sleep(0.5)
        after = machine_busy_s()
        if before is None or after is None:
            return 0.0
        load = (after - before) / (time.monotonic() - started)
        if load < busy_cores or time.monotonic() > deadline:
            return load


def spawn(variant: str, steps: int, threads: int, env: dict[str, str],
          profile: str = "") -> dict[str, Any]:
    """Run one variant in a child process; ``foreign_cores`` is the CPU the rest of the
    machine used meanwhile (other processes; 0 on a quiet machine), in cores."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", variant, str(steps),
               str(threads)] + ([f"--profiler={profile}"] if profile else [])
    busy_before, own_before, started = machine_busy_s(), children_cpu_s(), time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    busy_after, own_after, wall = machine_busy_s(), children_cpu_s(), time.monotonic() - started
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            result = dict(json.loads(line[len("RESULT "):]))
            if busy_before is not None and busy_after is not None:
                foreign = (busy_after - busy_before) - (own_after - own_before)
                result["foreign_cores"] = max(0.0, foreign / wall)
            return result
    raise RuntimeError(f"{variant} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


class Zygote:
    """A process that imports torch once (about 6 s here, most of a run) and forks one fresh
    child per run: each variant still runs in a process of its own, memspan is imported only
    in the memspan children, and the runs are short enough to alternate often."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--zygote"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdin is not None
        self._stdin, self._stdout = self.process.stdin, self.process.stdout
        if self._stdout.readline().strip() != "READY":
            raise RuntimeError("the zygote process did not start")

    def run(self, variant: str, steps: int, threads: int, env: dict[str, str],
            result_path: str) -> dict[str, Any]:
        """One run; ``foreign_cores``: the CPU the rest of the machine used meanwhile (other
        processes; 0 on a quiet machine), in cores."""
        busy_before, started = machine_busy_s(), time.monotonic()
        self._stdin.write(json.dumps({"variant": variant, "steps": steps, "threads": threads,
                                      "env": env, "result": result_path}) + "\n")
        self._stdin.flush()
        _, code, own_cpu = self._stdout.readline().split()
        busy_after, wall = machine_busy_s(), time.monotonic() - started
        if code != "0" or not os.path.exists(result_path):
            raise RuntimeError(f"the {variant} run failed (exit {code}); see stderr")
        result = dict(json.loads(Path(result_path).read_text()))
        if busy_before is not None and busy_after is not None:
            foreign = (busy_after - busy_before) - float(own_cpu)
            result["foreign_cores"] = max(0.0, foreign / wall)
        return result

    def close(self) -> None:
        self._stdin.close()
        self.process.wait(30)


def zygote_main() -> int:
    import traceback

    import torch
    import torch.optim
    from torch.utils.data import DataLoader  # noqa: F401  (imported once, before the forks)

    torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())  # imports torch._dynamo once
    print("READY", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        before = children_cpu_s()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.environ.clear()
                os.environ.update(request["env"])
                result = run_child(request["variant"], request["steps"], request["threads"])
                Path(request["result"]).write_text(json.dumps(result))
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        # the child and its DataLoader workers (which it waited for)
        print(f"DONE {os.waitstatus_to_exitcode(status)} {children_cpu_s() - before:.6f}",
              flush=True)
    return 0


def main() -> int:
    from _table import Row, report

    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    receiver = Receiver()
    zygote = Zygote()
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="memspan-bench-") as scratch:
            for round_index in range(rounds):
                shift = round_index % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    output_dir = os.path.join(scratch, f"{variant}-{round_index}")
                    os.makedirs(output_dir)
                    receiver.take()
                    quiet = wait_for_quiet()
                    result = zygote.run(variant, steps, threads,
                                        child_environment(variant, output_dir,
                                                          receiver.endpoint),
                                        os.path.join(scratch, f"{variant}-{round_index}.json"))
                    if variant.endswith("_otlp"):
                        received = receiver.take()
                        result["spans"] = received["spans"]
                        result["metric_posts"] = received["metric_posts"]
                    runs[variant].append(result)
                    print(f"round {round_index + 1}/{rounds} {variant:<15} median "
                          f"{result['median_ms']:6.2f} ms  mean {result['mean_ms']:6.2f} ms  "
                          f"CPU {result['cpu_ms']:6.2f} ms/step  spans "
                          f"{sum(result.get('spans', {}).values())}  other load: before "
                          f"{quiet:.2f}, during {result.get('foreign_cores', 0.0):.2f} cores",
                          file=sys.stderr)
    finally:
        zygote.close()
        receiver.close()

    def median_of(variant: str, key: str) -> float:
        return float(statistics.median(run[key] for run in runs[variant]))

    def ratio_of(variant: str, key: str) -> float:
        """The median over the rounds of the ratio to that round's uninstrumented run."""
        return float(statistics.median(
            run[key] / base[key] for run, base in zip(runs[variant], runs["uninstrumented"],
                                                       strict=True)))

    def added_of(variant: str, key: str) -> float:
        return float(statistics.median(
            run[key] - base[key] for run, base in zip(runs[variant], runs["uninstrumented"],
                                                       strict=True)))

    baseline_caller = median_of("uninstrumented", "caller_ms")
    rows = [Row(f"uninstrumented: median step ({threads} torch thread"
                f"{'s' if threads > 1 else ''})", median_of("uninstrumented", "median_ms"),
                "ms", "", 1.0),
            Row("uninstrumented: mean step", median_of("uninstrumented", "mean_ms"), "ms", "",
                1.0),
            Row("uninstrumented: process CPU per step", median_of("uninstrumented", "cpu_ms"),
                "ms", "", 1.0)]
    for variant in VARIANTS[1:]:
        label = LABELS[variant]
        targeted = variant.startswith("memspan")
        target = f"< {TARGET_PERCENT:g} %" if targeted else ""
        for kind, key in (("median step", "median_ms"), ("mean step", "mean_ms")):
            ratio = ratio_of(variant, key)
            overhead = (ratio - 1) * 100
            if key == "median_ms":
                rows.append(Row(f"{label}: {kind}", median_of(variant, key), "ms", "", ratio))
            rows.append(Row(f"{label}: overhead, {kind}", overhead, "%", target, None,
                            overhead < TARGET_PERCENT if targeted else None))
        rows.append(Row(f"{label}: process CPU per step", median_of(variant, "cpu_ms"), "ms",
                        "", ratio_of(variant, "cpu_ms")))
        rows.append(Row(f"{label}: process CPU added per step", added_of(variant, "cpu_ms"),
                        "ms"))
        if variant.startswith("uninstrumented"):
            continue
        # a full (gen-2) collection walks torch's ~1M objects: about 250 ms here, rare, and
        # triggered by the objects the telemetry keeps alive for a while (the mean of runs)
        gc_ms = statistics.mean(sum(run["gc"]["ms_per_step"]) for run in runs[variant])
        rows.append(Row(f"{label}: garbage collection pauses per step (mean of runs)", gc_ms,
                        "ms"))
        # Direct attribution, within each run (so the machine's drift cancels): the time
        # the caller's thread spends entering and leaving phases, beyond the no-op phases,
        # plus all the CPU of the telemetry threads and of the final flush, as if serial.
        caller = [run["caller_ms"] - baseline_caller for run in runs[variant]]
        background = [run["background_ms"] + run["flush_main_ms"] for run in runs[variant]]
        direct = [(c + b) / (run["median_ms"] - c) * 100
                  for c, b, run in zip(caller, background, runs[variant], strict=True)]
        rows.append(Row(f"{label}: caller's thread, phase enter+exit per step",
                        statistics.median(caller), "ms"))
        rows.append(Row(f"{label}: telemetry threads + final flush, CPU per step",
                        statistics.median(background), "ms"))
        overhead = statistics.median(direct)
        rows.append(Row(f"{label}: overhead, direct (caller + telemetry CPU) / step", overhead,
                        "%", target, None, overhead < TARGET_PERCENT if targeted else None))
        expected = WARMUP + steps
        delivered = min(min(run.get("spans", {}).get(name, 0) for name in PHASES)
                        for run in runs[variant])
        rows.append(Row(f"{label}: phase spans delivered, each phase (min of runs)",
                        delivered, "spans", f"= {expected}", None, delivered == expected))
    foreign = statistics.median(run.get("foreign_cores", 0.0) for variant in VARIANTS
                                for run in runs[variant])
    rows.append(Row("other processes' CPU during the runs (median of runs)", foreign, "cores"))
    print(f"\n{rounds} rounds x {len(VARIANTS)} variants, {steps} measured steps after "
          f"{WARMUP} warm-up steps, {time.monotonic() - started:.0f} s", file=sys.stderr)
    for variant in VARIANTS[1:]:
        print(f"{variant:<21} median-step ratio to uninstrumented, by round: " + " ".join(
            f"{run['median_ms'] / base['median_ms']:.3f}"
            for run, base in zip(runs[variant], runs["uninstrumented"], strict=True)),
            file=sys.stderr)
    for variant in VARIANTS:
        counts = [sum(run["gc"]["collections"][generation] for run in runs[variant])
                  for generation in range(3)]
        pauses = sum(sum(run["gc"]["ms_per_step"]) * run["steps"] for run in runs[variant])
        print(f"{variant:<21} garbage collections in {len(runs[variant]) * steps} steps, gen "
              f"0/1/2: {counts[0]}/{counts[1]}/{counts[2]}, {pauses:.0f} ms in all",
              file=sys.stderr)
    for variant in VARIANTS:
        threads_ms: dict[str, list[float]] = defaultdict(list)
        for run in runs[variant]:
            for name, ms in run["threads_ms"].items():
                threads_ms[name].append(ms)
        print(f"{variant:<21} CPU ms/step by thread: " + ", ".join(
            f"{name} {statistics.median(values):.3f}" for name, values in threads_ms.items()),
            file=sys.stderr)
    report("realistic_training", rows)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        chosen = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--profiler=")]
        outcome = run_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                            chosen[0] if chosen else "")
        print("RESULT " + json.dumps(outcome))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--zygote":
        sys.exit(zygote_main())
    if len(sys.argv) > 1 and sys.argv[1] == "--profile":
        sys.exit(profile_main())
    sys.exit(main())
