"""Property tests over the bundle reader behind ``memspan dumps``: hostile bundles of any shape.

Property: reading and rendering a bundle (``show``) or a dump directory (``list``) raises
nothing but :class:`BundleError`, prints no control character, stays within a fixed memory
bound whatever the file sizes, never blocks, and writes nothing anywhere.
"""

from __future__ import annotations

import json
import os
import tempfile
import tracemalloc
import unicodedata
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memspan.cli import dumps
from memspan.oom.bundle import BUNDLE_FILES, CUDA_SNAPSHOT_FILE
from memspan.oom.bundle_reader import BundleError, open_bundle
from memspan.oom.retention import list_bundles

MEMORY_BOUND = 96 << 20
KEYS = st.sampled_from([
    "schema_version", "files", "kind", "reason", "backend", "rank", "pid", "phase_path",
    "trace_id", "span_id", "session_id", "created_at_utc", "exception", "type", "module",
    "message", "classification", "observer", "requested_bytes", "device_free_bytes",
    "device_total_bytes", "allocated_bytes", "reserved_unallocated_bytes", "device",
    "user_metadata", "name", "attributes", "ts", "path", "rss", "retained", "duration_s",
    "values", "process.memory.usage", "before", "after", "torch", "devices", "memory_stats",
    "allocated_bytes", "all", "current", "peak", "host", "rss_bytes", "context", "error",
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["1e999", "\x1b[2J", "\u202e", "../../etc/passwd", "cuda:0", "sample",
                     "phase_start", "oom", "manifest.json"]),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=6),
                               st.dictionaries(st.one_of(KEYS, st.text(max_size=8)), children,
                                               max_size=8)),
    max_leaves=30,
)


def json_text(value: Any) -> bytes:
    return json.dumps(value).encode()


def some(keys: list[str]) -> dict[str, st.SearchStrategy[Any]]:
    return {key: JSON_VALUES for key in keys}


# bundle-shaped content: the right keys with values of any shape, so the schema is exercised
EVENT = st.fixed_dictionaries(
    {"type": st.sampled_from(["phase_start", "phase_end", "sample", "oom", "allocator_retry"])},
    optional={**some(["ts", "path", "rss", "allocated", "retained", "duration_s", "kind",
                      "reason", "before", "after", "error"]),
              "values": st.dictionaries(st.sampled_from(["process.memory.usage",
                                                         "memspan.torch.memory.allocated[c]"]),
                                        JSON_VALUES, max_size=3)},
)
SHAPED = {
    "manifest.json": st.fixed_dictionaries(
        {"schema_version": SCALARS},
        optional=some(["files", "kind", "reason", "backend", "rank", "pid", "phase_path",
                       "trace_id", "span_id", "session_id", "created_at_utc"])),
    "metadata.json": st.fixed_dictionaries({}, optional={
        "exception": st.fixed_dictionaries({}, optional=some(["type", "module", "message"])),
        "classification": st.fixed_dictionaries({}, optional=some([
            "requested_bytes", "device_free_bytes", "device_total_bytes", "device",
            "allocated_bytes", "reserved_unallocated_bytes"])),
        **some(["observer", "user_metadata", "context"])}),
    "phases.json": st.lists(st.fixed_dictionaries({}, optional=some(["name", "attributes"])),
                            max_size=4),
    "memory.json": st.fixed_dictionaries({}, optional=some(["torch", "host"])),
}


def content(name: str) -> st.SearchStrategy[tuple[str, Any]]:
    options = [
        st.just(("absent", None)),
        JSON_VALUES.map(lambda v: ("bytes", json_text(v))),
        st.binary(max_size=200).map(lambda b: ("bytes", b)),
        st.sampled_from([("link", "/dev/zero"), ("link", "../outside.txt"), ("link", "missing"),
                         ("link", "."), ("fifo", None), ("dir", None)]),
        st.integers(min_value=1, max_value=8 << 30).map(lambda size: ("sparse", size)),
        st.integers(min_value=1, max_value=3_000).map(  # nesting deeper than Python recurses
            lambda n: ("bytes", b'{"name": "x", "attributes": {"a": ' + b"[" * n + b"]" * n
                       + b"}}")),
    ]
    if name == "events.jsonl":
        options.append(st.lists(st.one_of(EVENT, JSON_VALUES), max_size=8).map(
            lambda vs: ("bytes", b"\n".join(json_text(v) for v in vs) + b"\n")))
    if name in SHAPED:
        options.append(SHAPED[name].map(lambda v: ("bytes", json_text(v))))
        options.append(SHAPED[name].map(lambda v: ("bytes", json_text(v))))
    return st.one_of(options)


BUNDLE = st.fixed_dictionaries({name: content(name) for name in (*BUNDLE_FILES,
                                                                 CUDA_SNAPSHOT_FILE)})


def build(root: Path, name: str, files: dict[str, tuple[str, Any]]) -> Path:
    bundle = root / name
    bundle.mkdir()
    for file_name, (kind, payload) in files.items():
        target = bundle / file_name
        if kind == "bytes":
            target.write_bytes(payload)
        elif kind == "link":
            target.symlink_to(payload)
        elif kind == "fifo":
            os.mkfifo(target)
        elif kind == "dir":
            target.mkdir()
        elif kind == "sparse":
            with open(target, "wb") as handle:
                handle.truncate(payload)
    return bundle


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        state[str(path)] = (info.st_size, info.st_mtime_ns)
    return state


def assert_printable(lines: list[str]) -> None:
    for line in lines:
        for char in line:
            assert unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp"), repr(line)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BUNDLE, st.sampled_from(["20260101T000000Z_h_r0_p1_1", "not-a-bundle-name"]),
       st.integers(min_value=0, max_value=200))
def test_show_and_list_of_any_bundle(files: dict[str, tuple[str, Any]], name: str,
                                     events: int) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        (root / "outside.txt").write_text("outside")
        dump_dir = root / "dumps"
        dump_dir.mkdir()
        bundle_path = build(dump_dir, name, files)
        before = tree_state(root)
        tracemalloc.start()
        try:
            try:
                bundle = open_bundle(str(bundle_path))
            except BundleError as error:
                assert "\n" not in str(error)
            else:
                assert_printable(dumps.render_bundle(bundle, events))
            rows = list(dumps._list_rows("header", reversed(list_bundles(str(dump_dir)))))
            assert_printable(rows)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < MEMORY_BOUND
        assert tree_state(root) == before
        assert (root / "outside.txt").read_text() == "outside"
