"""Property-based fuzzing of the report's OTLP JSON reader (and the bundle manifests it reads).

Property: whatever the bytes or JSON shapes, ``build_report`` either writes a report or
raises the documented :class:`InputError`; what it skips is counted; memory stays bounded;
nothing is written outside the reports directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from memspan.report import InputError, build_report
from memspan.report.builder import ReportResult
from memspan.report.lines import NOT_OBJECT, UNPARSABLE, WRONG_SHAPE, LineReader
from memspan.report.reader import Collector

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False), st.text(max_size=20),
    st.sampled_from(["1e999", "abc", "-1", "18446744073709551616", "", "memspan.run",
                     "memspan.phase.path", "memspan.session.id", "memspan.oom"]),
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=20,
)

KEYS = ["memspan.phase.path", "memspan.phase.depth", "memspan.session.id",
        "memspan.memory.rss.start", "memspan.memory.rss.end", "memspan.memory.rss.peak",
        "memspan.memory.device", "memspan.memory.allocated.start", "memspan.memory.peak_exact",
        "process.exit.code", "process.pid", "process.command_args", "memspan.run.peak_bytes"]


def _attr(key: str, value: Any) -> dict[str, Any]:
    return {"key": key, "value": value}


any_value = st.one_of(
    st.builds(lambda v: {"stringValue": v}, json_leaf),
    st.builds(lambda v: {"intValue": v}, json_leaf),
    st.builds(lambda v: {"doubleValue": v}, json_leaf),
    st.builds(lambda v: {"boolValue": v}, json_leaf),
    st.builds(lambda v: {"arrayValue": {"values": v}}, st.lists(json_value, max_size=3)),
    json_value,
)
attribute_list = st.lists(st.builds(_attr, st.sampled_from(KEYS), any_value), max_size=8)
time_value = st.one_of(st.just("1790000000000000000"), st.just("1790000000500000000"), json_leaf)
span = st.fixed_dictionaries(
    {"name": st.one_of(st.just("memspan.run"), st.just("step"), json_leaf),
     "startTimeUnixNano": time_value, "endTimeUnixNano": time_value,
     "attributes": st.one_of(attribute_list, json_value)},
    optional={"status": json_value,
              "events": st.lists(st.fixed_dictionaries(
                  {"name": st.one_of(st.just("memspan.oom"), json_leaf),
                   "attributes": st.one_of(st.lists(st.builds(
                       _attr, st.sampled_from(["memspan.oom.kind", "memspan.oom.dump.path"]),
                       any_value), max_size=3), json_value)}), max_size=2)},
)
spans_record = st.builds(
    lambda spans, resource: {"resourceSpans": [{"resource": {"attributes": resource},
                                                "scopeSpans": [{"scope": {"name": "memspan"},
                                                                "spans": spans}]}]},
    st.lists(st.one_of(span, json_value), max_size=6),
    st.one_of(st.lists(st.builds(_attr, st.sampled_from(
        ["service.name", "service.instance.id", "memspan.rank", "host.name"]), any_value),
        max_size=4), json_value),
)
point = st.fixed_dictionaries({"timeUnixNano": time_value,
                               "asInt": json_leaf, "attributes": attribute_list})
metrics_record = st.builds(
    lambda name, points: {"resourceMetrics": [{"resource": {"attributes": []}, "scopeMetrics": [
        {"metrics": [{"name": name, "gauge": {"dataPoints": points}}]}]}]},
    st.sampled_from(["process.memory.usage", "memspan.cgroup.memory.limit", "other"]),
    st.lists(st.one_of(point, json_value), max_size=4),
)
line = st.one_of(
    spans_record.map(json.dumps),
    json_value.map(json.dumps),
    st.builds(lambda v: json.dumps({"resourceSpans": v}), json_value),
    st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _run(traces: list[str], metrics: list[str], manifest: str | None) -> ReportResult | InputError:
    """Build a report from these lines; the report, or the InputError it raised."""
    outcome: ReportResult | InputError
    root = Path(tempfile.mkdtemp(prefix="memspan-fuzz-"))
    try:
        source = root / "in"
        source.mkdir()
        (source / "traces.jsonl").write_text("\n".join(traces) + "\n", encoding="latin-1",
                                             errors="replace")
        (source / "metrics.jsonl").write_text("\n".join(metrics) + "\n", encoding="latin-1",
                                              errors="replace")
        dumps = root / "dumps"
        if manifest is not None:
            bundle = dumps / "20260101T000000Z_host_r0_p1_0"
            bundle.mkdir(parents=True)
            (bundle / "manifest.json").write_text(manifest, encoding="latin-1", errors="replace")
            (bundle / "events.jsonl").write_text("\n".join(traces), encoding="latin-1",
                                                 errors="replace")
        before = _tree(root)
        tracemalloc.start()
        try:
            outcome = build_report(str(source), dump_dir=str(dumps), out_dir=str(root / "out"))
        except InputError as error:
            assert str(error)  # one clear line
            outcome = error
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert peak < 64 << 20
        written = {p for p in _tree(root) - before if not p.startswith("out")}
        assert written == set(), written
    finally:
        shutil.rmtree(root)
    return outcome


def _expected_skips(data: bytes) -> Counter[str] | None:
    """What the reader must skip, by reason, for ``data`` as the traces file (one line each
    newline-separated part); ``None`` if a part is a record the reader would use."""
    expected: Counter[str] = Counter()
    for part in (data + b"\n").split(b"\n")[:-1]:
        if not part.strip():
            continue  # a blank line is not a record
        try:
            record = json.loads(part)
        except (ValueError, RecursionError):
            expected[UNPARSABLE] += 1
            continue
        if not isinstance(record, dict):
            expected[NOT_OBJECT] += 1
        elif not isinstance(record.get("resourceSpans"), list):
            expected[WRONG_SHAPE] += 1
        else:
            return None
    return expected


def _reported_skips(message: str) -> Counter[str]:
    """The counts in describe_skips' ``N records skipped (a reason, b reason)``."""
    found = re.search(r"(\d+) records? skipped \(([^()]*)\)", message)
    if found is None:
        return Counter()
    counts: Counter[str] = Counter()
    for part in found.group(2).split(", "):
        count, reason = part.split(" ", 1)
        counts[reason] = int(count)
    assert sum(counts.values()) == int(found.group(1)), message
    return counts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces=st.lists(line, max_size=6), metrics=st.lists(
    st.one_of(metrics_record.map(json.dumps), line), max_size=3),
    manifest=st.one_of(st.none(), json_value.map(json.dumps), st.just('{"session_id": "x"}')))
def test_the_reader_never_raises_anything_but_input_error(traces: list[str], metrics: list[str],
                                                          manifest: str | None) -> None:
    _run(traces, metrics, manifest)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=2000))
def test_random_bytes_are_skipped_and_counted(data: bytes) -> None:
    expected = _expected_skips(data)
    assume(expected is not None)  # random bytes that happen to be a traces record
    assert expected is not None
    outcome = _run([data.decode("latin-1")], [], None)
    # nothing in random bytes is a span: the report refuses, naming every line it skipped
    assert isinstance(outcome, InputError), outcome
    assert _reported_skips(str(outcome)) == expected, (str(outcome), expected)
    # and the reader itself counted exactly those lines, by reason
    with tempfile.TemporaryDirectory() as root:
        traces = Path(root, "traces.jsonl")
        traces.write_bytes(data + b"\n")
        collector = Collector(reader=LineReader())
        collector.read_traces(str(traces))
        assert collector.reader.skipped == expected
        assert collector.reader.lines == sum(expected.values())


def test_the_fuzz_harness_sees_a_real_report() -> None:
    # A sanity check that the property above is not vacuous: a good line gives a page.
    good = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "name": "step", "startTimeUnixNano": "1790000000000000000",
        "endTimeUnixNano": "1790000000500000000",
        "attributes": [{"key": "memspan.phase.path", "value": {"stringValue": "step"}}]}]}]}]})
    root = Path(tempfile.mkdtemp())
    try:
        (root / "in").mkdir()
        (root / "in" / "traces.jsonl").write_text(good + "\n")
        result = build_report(str(root / "in"), dump_dir=str(root / "d"), out_dir=str(root / "o"))
        assert result.spans_read == 1 and os.path.isfile(result.html_path)
    finally:
        shutil.rmtree(root)


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.one_of(
    st.fixed_dictionaries({"ts": json_leaf, "type": st.sampled_from(
        ["phase_start", "phase_end", "sample", "oom", "x"]), "path": json_leaf,
        "scope_id": json_leaf, "rss": json_leaf, "retained": json_leaf, "duration_s": json_leaf,
        "allocated": json_leaf, "values": json_value}).map(json.dumps),
    json_value.map(json.dumps), st.binary(max_size=40).map(lambda b: b.decode("latin-1"))),
    max_size=12))
def test_breadcrumb_events_replay_never_raises(lines: list[str]) -> None:
    from memspan.report.bundles import replay_events
    from memspan.report.model import ReportModel

    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "events.jsonl")
        with open(path, "w", encoding="latin-1", errors="replace") as handle:
            handle.write("\n".join(lines))
        model = ReportModel()
        assert replay_events(path, model) == 0
        assert model.phases_from_breadcrumbs <= len(lines)
