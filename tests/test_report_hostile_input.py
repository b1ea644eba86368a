"""``memspan report`` on damaged and hostile input: skip and count, bounded, one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from launcher_helpers import clean_env
from memspan.report import InputError, build_report
from memspan.report.lines import LineReader
from report_jobs import memspan_cli


def attr(key: str, value: object) -> dict[str, object]:
    if isinstance(value, str):
        return {"key": key, "value": {"stringValue": value}}
    return {"key": key, "value": {"intValue": str(value)}}


def good_span(i: int, path: str = "step", session: str = "s1") -> dict[str, object]:
    start = 1_790_000_000_000_000_000 + i * 10_000_000
    return {"name": path, "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 5_000_000),
            "attributes": [attr("memspan.phase.path", path), attr("memspan.phase.depth", 1),
                           attr("memspan.session.id", session),
                           attr("memspan.memory.rss.start", 100 << 20),
                           attr("memspan.memory.rss.end", 100 << 20),
                           attr("memspan.memory.rss.peak", 101 << 20)], "status": {}}


def line(*spans: object) -> str:
    return json.dumps({"resourceSpans": [{"resource": {"attributes": [
        attr("service.name", "svc")]}, "scopeSpans": [{"spans": list(spans)}]}]})


HOSTILE_LINES = [
    '{"resourceSpans":{"a":1}}',
    '{"resourceSpans":[{"scopeSpans":{"spans":5}}]}',
    '{"resourceSpans":"text"}',
    '{"resourceSpans":[5, "x", null]}',
    line({**good_span(90), "startTimeUnixNano": "abc"}),
    line({**good_span(91), "status": None}),
    line({**good_span(92), "attributes": "not a list"}),
    line({**good_span(93), "attributes": [{"key": "memspan.memory.rss.end",
                                           "value": {"intValue": "1e999"}}]}),
    line({**good_span(94), "endTimeUnixNano": 1e999}),
    line("a string where a span should be"),
    '{"resourceSpans":[{"resource":"x","scopeSpans":[{"scope":5,"spans":[{"events":"x"}]}]}]}',
    "[1, 2, 3]",
    '"just a string"',
    "{not json",
    '{"resourceSpans": [' * 100_000,  # nests too deep for the JSON parser
    "\x00\xff\xfe garbage",
]


def write_traces(directory: Path, lines: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "traces.jsonl").write_text("\n".join(lines) + "\n", errors="surrogateescape")


def test_one_bad_line_never_aborts_the_report(tmp_path: Path) -> None:
    good = [line(*(good_span(i) for i in range(6)))]
    write_traces(tmp_path / "in", good + HOSTILE_LINES + [line(good_span(10))])
    result = build_report(str(tmp_path / "in"), dump_dir=str(tmp_path / "d"),
                          out_dir=str(tmp_path / "r"))
    # the good spans all count, and so does the one whose only flaw is "status": null
    assert result.verdicts["step"].runs == 8
    assert result.spans_read == 8
    # every hostile record is counted, by reason
    assert result.skipped.startswith("1")  # e.g. "18 records skipped (...)"
    assert "not JSON" in result.skipped and "wrong shape" in result.skipped
    assert "not a JSON object" in result.skipped
    html = Path(result.html_path).read_text()
    assert "records skipped" in html


def test_the_cli_prints_what_it_skipped(tmp_path: Path) -> None:
    write_traces(tmp_path / "in", [line(*(good_span(i) for i in range(5))), "{cut in the mid"])
    result = memspan_cli("report", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "r"))
    assert result.returncode == 0
    assert "memspan report: 1 record skipped (1 not JSON)" in result.stderr


def test_a_truncated_output_file_is_not_a_silent_empty_report(tmp_path: Path) -> None:
    # A short write on a full disk glued two batches into one unparsable line: today's
    # report said "0 phase spans read" and exited 0.
    whole = line(*(good_span(i) for i in range(5)))
    write_traces(tmp_path / "in", [whole[: len(whole) // 2] + whole])
    result = memspan_cli("report", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "r"))
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip() == (
        f"memspan report: nothing to report in {str(tmp_path / 'in')!r}: no phase span and no "
        "memspan run record could be read (1 record skipped (1 not JSON))")
    assert "Traceback" not in result.stderr


def test_a_session_with_no_readable_span_among_damaged_lines_exits_non_zero(tmp_path: Path) -> None:
    run_span = {"name": "memspan.run", "startTimeUnixNano": "1790000000000000000",
                "endTimeUnixNano": "1790000001000000000",
                "attributes": [attr("process.exit.code", 0)], "status": {}}
    write_traces(tmp_path / "in", [line(run_span), "{garbled"])
    result = memspan_cli("report", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "r"))
    assert result.returncode == 1
    assert "the input looks damaged" in result.stderr and "1 not JSON" in result.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_only_regular_files_are_read(tmp_path: Path, kind: str) -> None:
    source = tmp_path / "in"
    source.mkdir()
    traces = source / "traces.jsonl"
    if kind == "fifo":
        os.mkfifo(traces)
    elif kind == "dev-zero":
        traces.symlink_to("/dev/zero")
    else:
        traces.mkdir()
    result = memspan_cli("report", "--input", str(source), "--out", str(tmp_path / "r"),
                         timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"memspan report: {str(traces)!r} is not a regular file"


def test_a_200_mb_line_costs_bounded_memory(tmp_path: Path) -> None:
    # One huge line (here 64 MiB, unparsable): the reader skips it in chunks of bounded size.
    source = tmp_path / "in"
    source.mkdir()
    with open(source / "traces.jsonl", "w") as handle:
        handle.write(line(*(good_span(i) for i in range(5))) + "\n")
        handle.write('{"resourceSpans": "' + "x" * (64 << 20) + '"}\n')
        handle.write(line(good_span(6)) + "\n")
    script = ("import resource, sys; from memspan.report import build_report; "
              f"r = build_report({str(source)!r}, dump_dir={str(tmp_path / 'd')!r}, "
              f"out_dir={str(tmp_path / 'r')!r}); "
              "print(r.verdicts['step'].runs, r.skipped); "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    baseline = subprocess.run([sys.executable, "-c", "import resource, memspan.report; "
                               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                              env=clean_env(), capture_output=True, text=True, check=True)
    result = subprocess.run([sys.executable, "-c", script], env=clean_env(), capture_output=True,
                            text=True, timeout=120, check=True)
    counts, peak_kib = result.stdout.splitlines()
    assert counts == "6 1 record skipped (1 line too long)"
    grown_mib = (int(peak_kib) - int(baseline.stdout)) / 1024
    assert grown_mib < 48, f"the report process grew {grown_mib:.0f} MiB for a 64 MiB line"


def test_line_bound_is_exact() -> None:
    import io

    reader = LineReader(max_line_bytes=10)
    data = io.BytesIO(b'{"a":12345}\n{"a":1234}\n' + b"y" * 25 + b"\n{}\n")
    lines = [raw for raw, _ in reader._raw_lines(data)]
    assert lines == [None, b'{"a":1234}\n', None, b"{}\n"]
    assert reader.skipped["line too long"] == 2


def test_control_characters_never_reach_the_terminal(tmp_path: Path) -> None:
    evil = "\x1b]0;pwned\x07\x1b[31mred\u202e"
    span = good_span(1, path=evil, session="s\x1b[2J")
    write_traces(tmp_path / "in", [json.dumps({"resourceSpans": [{"resource": {"attributes": [
        attr("service.name", "svc\x1b[5m")]}, "scopeSpans": [{"spans": [span]}]}]})])
    listed = memspan_cli("report", "--input", str(tmp_path / "in"), "--list-sessions")
    report = memspan_cli("report", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "r"))
    for result in (listed, report):
        assert result.returncode == 0, result.stderr
        for stream in (result.stdout, result.stderr):
            assert "\x1b" not in stream and "\x07" not in stream and "\u202e" not in stream
    assert "s?[2J" in listed.stdout and "svc?[5m" in listed.stdout


def test_a_closed_pipe_is_handled_quietly(tmp_path: Path) -> None:
    lines = [line(good_span(i, session=f"session-{i}")) for i in range(3000)]
    write_traces(tmp_path / "in", lines)
    reader_fd, writer_fd = os.pipe()
    process = subprocess.Popen([sys.executable, "-m", "memspan", "report", "--input",
                                str(tmp_path / "in"), "--list-sessions"],
                               stdout=writer_fd, stderr=subprocess.PIPE, env=clean_env())
    os.close(writer_fd)
    with os.fdopen(reader_fd, "rb") as pipe:
        pipe.read(100)  # like `| head -c 100`: read a little, then go away
    stderr = process.communicate(timeout=120)[1].decode()
    assert process.returncode == 0
    assert stderr == ""  # no BrokenPipeError traceback, no "Exception ignored"


def test_a_missing_session_is_one_line(tmp_path: Path) -> None:
    write_traces(tmp_path / "in", [line(good_span(1))])
    result = memspan_cli("report", "--input", str(tmp_path / "in"), "--session", "zzz",
                         "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("memspan report: no session 'zzz' in")
    with pytest.raises(InputError):
        build_report(str(tmp_path / "in"), dump_dir=str(tmp_path), out_dir=str(tmp_path / "r"),
                     session="zzz")


def test_hostile_bundles_are_skipped_not_followed(tmp_path: Path) -> None:
    write_traces(tmp_path / "in", [line(*(good_span(i) for i in range(5)))])
    dumps = tmp_path / "dumps"
    fifo_bundle = dumps / "20260101T000000Z_host_r0_p1_0"
    fifo_bundle.mkdir(parents=True)
    os.mkfifo(fifo_bundle / "manifest.json")
    zero_bundle = dumps / "20260101T000001Z_host_r0_p2_0"
    zero_bundle.mkdir()
    (zero_bundle / "manifest.json").symlink_to("/dev/zero")
    shaped = dumps / "20260101T000002Z_host_r0_p3_0"
    shaped.mkdir()
    (shaped / "manifest.json").write_text('{"session_id": "s1", "kind": {"x": 1}, "files": 5}')
    done = threading.Event()
    results: list[object] = []

    def build() -> None:
        results.append(build_report(str(tmp_path / "in"), dump_dir=str(dumps),
                                    out_dir=str(tmp_path / "r")))
        done.set()

    threading.Thread(target=build, daemon=True).start()
    assert done.wait(60), "a FIFO manifest hung the report"
    (report,) = results
    sidecar = json.loads(Path(report.json_path).read_text())  # type: ignore[attr-defined]
    assert [o["dump_path"] for o in sidecar["ooms"]] == [str(shaped.resolve())]

