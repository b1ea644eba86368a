"""MemspanConfig and the variable registry: every variable parsed and validated, with exact
messages that name the variable and its valid range."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memspan import ConfigError, MemspanConfig
from memspan import environment_variables as ev
from memspan.oom.bundle import ENV_ALLOWLIST


def test_defaults() -> None:
    config = MemspanConfig.from_env({})
    assert config.sample_interval_s == 0.1
    assert config.nvml_interval_s == 1.0
    assert config.dump_dir == os.path.abspath("oom_dumps")
    assert config.output_dir == os.path.abspath("memspan-out")
    assert config.buffer_size == 10_000
    assert config.rss_metric is True
    assert config.quiet is False


def test_environment_and_overrides() -> None:
    env = {"MEMSPAN_SAMPLE_INTERVAL": "0.05", "MEMSPAN_RSS_METRIC": "off",
           "MEMSPAN_BUFFER_SIZE": "500", "MEMSPAN_DUMP_DIR": "/tmp/d"}
    config = MemspanConfig.from_env(env, buffer_size=42)
    assert config.sample_interval_s == 0.05
    assert config.rss_metric is False
    assert config.buffer_size == 42
    assert config.dump_dir == "/tmp/d"


def test_an_override_wins_even_over_a_bad_variable() -> None:
    config = MemspanConfig.from_env({"MEMSPAN_BUFFER_SIZE": "lots"}, buffer_size=7)
    assert config.buffer_size == 7


_BOOL = "accepted: true/false, 1/0, yes/no, on/off"
BAD_VALUES = [
    ("MEMSPAN_SAMPLE_INTERVAL", "fast",
     "MEMSPAN_SAMPLE_INTERVAL='fast' is not a number; "
     "accepted: a number of seconds in [0.001, 3600]"),
    ("MEMSPAN_SAMPLE_INTERVAL", "0",
     "MEMSPAN_SAMPLE_INTERVAL=0.0 is out of range; accepted: a number of seconds in [0.001, 3600]"),
    ("MEMSPAN_SAMPLE_INTERVAL", "1e-300",
     "MEMSPAN_SAMPLE_INTERVAL=1e-300 is out of range; "
     "accepted: a number of seconds in [0.001, 3600]"),
    ("MEMSPAN_NVML_INTERVAL", "-1",
     "MEMSPAN_NVML_INTERVAL=-1.0 is out of range; accepted: a number of seconds in [0.01, 3600]"),
    ("MEMSPAN_NVML_INTERVAL", "nan",
     "MEMSPAN_NVML_INTERVAL=nan is not a finite number; "
     "accepted: a number of seconds in [0.01, 3600]"),
    ("MEMSPAN_EXPORT_INTERVAL", "1e23",
     "MEMSPAN_EXPORT_INTERVAL=1e+23 is out of range; accepted: a number of seconds in [0.1, 86400]"),
    ("MEMSPAN_EXPORT_INTERVAL", "1e-300",
     "MEMSPAN_EXPORT_INTERVAL=1e-300 is out of range; accepted: a number of seconds in [0.1, 86400]"),
    ("MEMSPAN_OUTPUT_MAX_MB", "1e-300",
     "MEMSPAN_OUTPUT_MAX_MB=1e-300 is out of range; accepted: a number of MiB in [0.01, 1048576]"),
    ("MEMSPAN_OUTPUT_MAX_MB", "lots",
     "MEMSPAN_OUTPUT_MAX_MB='lots' is not a number; accepted: a number of MiB in [0.01, 1048576]"),
    ("MEMSPAN_OOM_ENABLED", "maybe", f"MEMSPAN_OOM_ENABLED='maybe' is not a boolean; {_BOOL}"),
    ("MEMSPAN_BUFFER_SIZE", "1e3",
     "MEMSPAN_BUFFER_SIZE='1e3' is not an integer; accepted: an integer in [1, 10000000]"),
    ("MEMSPAN_BUFFER_SIZE", "0",
     "MEMSPAN_BUFFER_SIZE=0 is out of range; accepted: an integer in [1, 10000000]"),
    ("MEMSPAN_MAX_DUMPS", "-2",
     "MEMSPAN_MAX_DUMPS=-2 is out of range; accepted: an integer in [1, 1000000]"),
    ("MEMSPAN_MAX_TOTAL_MB", "big",
     "MEMSPAN_MAX_TOTAL_MB='big' is not an integer; accepted: an integer in [1, 16777216]"),
    ("MEMSPAN_CUDA_HISTORY", "2", f"MEMSPAN_CUDA_HISTORY='2' is not a boolean; {_BOOL}"),
    ("MEMSPAN_BREADCRUMBS", "y", f"MEMSPAN_BREADCRUMBS='y' is not a boolean; {_BOOL}"),
    ("MEMSPAN_AUTO_PHASES", "enabled",
     f"MEMSPAN_AUTO_PHASES='enabled' is not a boolean; {_BOOL}"),
    ("MEMSPAN_RSS_METRIC", "nope", f"MEMSPAN_RSS_METRIC='nope' is not a boolean; {_BOOL}"),
    ("MEMSPAN_QUIET", "shh", f"MEMSPAN_QUIET='shh' is not a boolean; {_BOOL}"),
    ("MEMSPAN_SPAN_MODE", "fast",
     "MEMSPAN_SPAN_MODE='fast' is not one of the accepted values; "
     "accepted: one of `deferred`, `sync`, `sdk`"),
    ("MEMSPAN_STEP_KEEP_EVERY", "0",
     "MEMSPAN_STEP_KEEP_EVERY=0 is out of range; accepted: an integer in [1, 1000000000]"),
    ("MEMSPAN_STEP_KEEP_FIRST", "-1",
     "MEMSPAN_STEP_KEEP_FIRST=-1 is out of range; accepted: an integer in [0, 1000000000]"),
    ("MEMSPAN_STEP_KEEP_RETAINED_MB", "-1",
     "MEMSPAN_STEP_KEEP_RETAINED_MB=-1.0 is out of range; accepted: a number of MiB in [0, 1048576]"),
    ("MEMSPAN_STEP_PEAK_INCREASE_MB", "x",
     "MEMSPAN_STEP_PEAK_INCREASE_MB='x' is not a number; accepted: a number of MiB in [0, 1048576]"),
    ("MEMSPAN_TRACE_ROOTS", "x" * 5000,
     "MEMSPAN_TRACE_ROOTS='" + "x" * 76 + "..."
     " is not usable; accepted: text of at most 4096 characters"),
    ("MEMSPAN_JOB_ID", "x" * 5000,
     "MEMSPAN_JOB_ID='" + "x" * 76 + "..."
     " is not usable; accepted: text of at most 4096 characters"),
]


@pytest.mark.parametrize(("variable", "value", "message"), BAD_VALUES)
def test_bad_value_names_the_variable_and_the_range(variable: str, value: str,
                                                    message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        MemspanConfig.from_env({variable: value})
    assert str(raised.value) == message


EXTERNAL_BAD_VALUES = [
    ("MEMSPAN_LEAK_SLOPE_BYTES", "inf",
     "MEMSPAN_LEAK_SLOPE_BYTES=inf is not a finite number; "
     "accepted: a number of bytes in [1, 1125899906842624]"),
    ("MEMSPAN_LEAK_MIN_RUNS", "2",
     "MEMSPAN_LEAK_MIN_RUNS=2 is out of range; accepted: an integer in [3, 1000000]"),
    ("MEMSPAN_LEAK_MIN_R2", "1.5",
     "MEMSPAN_LEAK_MIN_R2=1.5 is out of range; accepted: a number in [0, 1]"),
    ("MEMSPAN_PLATEAU_BYTES", "0",
     "MEMSPAN_PLATEAU_BYTES=0 is out of range; accepted: an integer in [1, 1125899906842624]"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "abc",
     "OTEL_EXPORTER_OTLP_TIMEOUT='abc' is not a number; "
     "accepted: a number of seconds in [0.001, 3600]"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://[::1",
     "OTEL_EXPORTER_OTLP_ENDPOINT='http://[::1' is not a URL (Invalid IPv6 URL); "
     "accepted: an http:// or https:// URL (or host:port for gRPC)"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://collector",
     "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT='ftp://collector' is not an http(s) URL; "
     "accepted: an http:// or https:// URL (or host:port for gRPC)"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "udp",
     "OTEL_EXPORTER_OTLP_PROTOCOL='udp' is not one of the accepted values; "
     "accepted: one of `grpc`, `http/protobuf`, `http/json`"),
    ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "-1",
     "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT=-1 is out of range; "
     "accepted: an integer in [1, 2147483647]"),
    ("WORLD_SIZE", "0", "WORLD_SIZE=0 is out of range; accepted: an integer in [1, 2147483647]"),
    ("RANK", "-1", "RANK=-1 is out of range; accepted: an integer in [0, 2147483647]"),
]


@pytest.mark.parametrize(("variable", "value", "message"), EXTERNAL_BAD_VALUES)
def test_other_declared_variables_are_validated_the_same_way(variable: str, value: str,
                                                            message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ev.read(variable, {variable: value})
    assert str(raised.value) == message


def test_every_setting_has_a_bad_value_case_or_is_a_path() -> None:
    settings = {v.name for v in ev.settings().values()}
    covered = {variable for variable, _, _ in BAD_VALUES}
    assert settings - covered == {"MEMSPAN_OUTPUT_DIR", "MEMSPAN_DUMP_DIR", "MEMSPAN_REPORTS_DIR"}


@pytest.mark.parametrize("variable", ["MEMSPAN_OUTPUT_DIR", "MEMSPAN_DUMP_DIR",
                                      "MEMSPAN_REPORTS_DIR"])
def test_a_directory_variable_naming_a_file_is_refused(variable: str, tmp_path: Path) -> None:
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    with pytest.raises(ConfigError) as raised:
        MemspanConfig.from_env({variable: str(a_file)})
    assert str(raised.value) == (f"{variable}={str(a_file)!r} exists and is not a directory; "
                                 "accepted: a directory path, not an existing file")


def test_relative_directories_are_resolved_once(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = MemspanConfig.from_env({"MEMSPAN_DUMP_DIR": "dumps"}, output_dir="out",
                                    reports_dir="reports")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert config.dump_dir == str(tmp_path / "dumps")
    assert config.output_dir == str(tmp_path / "out")
    assert config.reports_dir == str(tmp_path / "reports")
    assert config.replace(buffer_size=3).dump_dir == str(tmp_path / "dumps")


def test_keyword_errors_name_the_keyword() -> None:
    with pytest.raises(ConfigError, match=r"^sample_interval_s=-0.5 is out of range"):
        MemspanConfig(sample_interval_s=-0.5)
    with pytest.raises(ConfigError, match=r"^output_dir='  ' is not usable"):
        MemspanConfig(output_dir="  ")
    with pytest.raises(ConfigError, match=r"^buffer_size=True is not an integer"):
        MemspanConfig(buffer_size=True)
    with pytest.raises(ConfigError, match=r"unknown memspan setting"):
        MemspanConfig.from_env({}, sampel_interval=1)


def test_grpc_style_host_port_endpoints_are_accepted() -> None:
    assert ev.read("OTEL_EXPORTER_OTLP_ENDPOINT", {"OTEL_EXPORTER_OTLP_ENDPOINT":
                                                   "collector:4317"}) == "collector:4317"
    with pytest.raises(ConfigError, match="Port out of range"):
        ev.read("OTEL_EXPORTER_OTLP_ENDPOINT", {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:99999"})


def test_leak_threshold_values_are_keyed_by_field() -> None:
    values = ev.leak_threshold_values({"MEMSPAN_LEAK_MIN_RUNS": "7",
                                       "MEMSPAN_LEAK_SLOPE_BYTES": "2e6"})
    assert values == {"min_runs": 7, "slope_bytes_per_run": 2e6}
    assert ev.leak_threshold_values({}) == {}


def test_bundle_allowlist_is_derived_from_the_declarations() -> None:
    declared = {name for name, v in ev.REGISTRY.items() if v.in_bundle}
    assert declared <= set(ENV_ALLOWLIST)
    assert {v.setting for v in ev.REGISTRY.values() if v.name.startswith("MEMSPAN_")
            and v.name not in ENV_ALLOWLIST} == set()
    # URLs can hold credentials (https://user:token@host): never in a bundle
    assert not {name for name, v in ev.REGISTRY.items() if v.kind == "url"} & set(ENV_ALLOWLIST)


def test_the_docs_table_matches_the_declarations() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    for external, marker in ((False, "memspan"), (True, "standard")):
        begin = f"<!-- BEGIN GENERATED {marker} variables -->\n"
        end = f"<!-- END GENERATED {marker} variables -->"
        assert begin in doc and end in doc, f"markers for the {marker} table are missing"
        table = doc.split(begin, 1)[1].split(end, 1)[0]
        assert table == ev.markdown_table(external=external), (
            "docs/configuration.md is out of date: paste the output of "
            f"python -c 'from memspan.environment_variables import markdown_table; "
            f"print(markdown_table(external={external}), end=\"\")'")
