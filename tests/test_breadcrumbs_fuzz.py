"""Property-based fuzzing of breadcrumb parsing and of the launcher's breadcrumb pass.

Properties: only the documented outcomes come out (``parse_breadcrumb`` is total: records
or a counted bad line; ``read_breadcrumb`` raises only ``OSError`` for unusable files;
``collect_breadcrumbs`` never raises and reports skips), memory stays bounded by the size
bound, and nothing is written outside the dump directory.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memspan.launcher.breadcrumb_bundles import collect_breadcrumbs
from memspan.launcher.exit_classify import classify_process_exit
from memspan.oom.breadcrumbs import parse_breadcrumb, read_breadcrumb

NO_SUCH_PID = 900_000_000  # above any pid_max: never alive

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                       st.text(max_size=20))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
_event = st.fixed_dictionaries(
    {"type": st.sampled_from(["phase_start", "phase_end", "sample", "oom", "breadcrumb_header",
                              "user", 5, None])},
    optional={"path": _json, "scope_id": _json, "rss": _json, "rss_peak": _json,
              "values": _json, "started_at": _json, "session_id": _json, "seq": _json})
_line = st.one_of(
    _event.map(lambda e: json.dumps(e).encode()),
    _json.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=60),
    st.just(b"{" * 5000),  # deep nesting
    st.just(b'{"type": "phase_start", "path": "cut'),
)
_content = st.lists(_line, max_size=25).map(lambda lines: b"\n".join(lines))


@settings(max_examples=150, deadline=None)
@given(_content)
def test_parse_is_total(data: bytes) -> None:
    header, events, bad = parse_breadcrumb(data)
    assert header is None or isinstance(header, dict)
    assert all(isinstance(e, dict) for e in events)
    assert bad >= 0
    assert len(events) + bad + (header is not None) <= data.count(b"\n") + 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_content, st.integers(min_value=64, max_value=4096))
def test_read_is_bounded(tmp_path: Path, data: bytes, bound: int) -> None:
    path = tmp_path / "r0_p1.jsonl"
    path.write_bytes(data * 50)
    tracemalloc.start()
    try:
        read_breadcrumb(str(path), max_bytes=bound)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Parsed objects cost more than their bytes, but the input read is capped at ~2 bounds.
    assert peak < 64 * (2 * bound + 4096) + 1_000_000


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_content, st.sampled_from(["now", "old", "none"])), min_size=1,
                max_size=4),
       st.sampled_from([-9, 0, 1, 137]), st.booleans())
def test_collect_never_raises_and_writes_only_in_the_dump_dir(
        files: list[tuple[bytes, str]], exit_code: int, rose: bool) -> None:
    with tempfile.TemporaryDirectory() as raw:
        root = Path(raw)
        (root / "outside.txt").write_text("keep")
        crumbs = root / "dumps/.breadcrumbs"
        crumbs.mkdir(parents=True, mode=0o700)
        started = time.time()
        for index, (data, age) in enumerate(files):
            header: dict[str, Any] = {"type": "breadcrumb_header"}
            if age != "none":
                header["started_at"] = started + (1 if age == "now" else -3600)
            (crumbs / f"r{index}_p{NO_SUCH_PID + index}.jsonl").write_bytes(
                json.dumps(header).encode() + b"\n" + data)
        before = _snapshot(root)
        outcome = collect_breadcrumbs(
            str(root / "dumps"), classify_process_exit(exit_code), run_started=started,
            child_pid=os.getpid(), cgroup_oom_rose=rose, max_dumps=10, max_total_mb=64)
        after = _snapshot(root)
        assert {p for p in after - before if not p.startswith("dumps/")} == set()
        assert (root / "outside.txt").read_text() == "keep"
        assert len(outcome.bundles) + len(outcome.stale) + outcome.discarded + \
            outcome.skipped <= len(files)
        for bundle in outcome.bundles:
            assert Path(bundle).parent == root / "dumps"
