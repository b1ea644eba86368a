"""MemspanConfig: every MEMSPAN_* variable, parsed and validated with exact messages."""

from __future__ import annotations

import pytest

from memspan import ConfigError, MemspanConfig


def test_defaults() -> None:
    config = MemspanConfig.from_env({})
    assert config.sample_interval_s == 0.1
    assert config.nvml_interval_s == 1.0
    assert config.dump_dir == "oom_dumps"
    assert config.buffer_size == 10_000
    assert config.rss_metric is True


def test_environment_and_overrides() -> None:
    env = {"MEMSPAN_SAMPLE_INTERVAL": "0.05", "MEMSPAN_RSS_METRIC": "off",
           "MEMSPAN_BUFFER_SIZE": "500", "MEMSPAN_DUMP_DIR": "/tmp/d"}
    config = MemspanConfig.from_env(env, buffer_size=42)
    assert config.sample_interval_s == 0.05
    assert config.rss_metric is False
    assert config.buffer_size == 42
    assert config.dump_dir == "/tmp/d"


BAD_VALUES = [
    ("MEMSPAN_SAMPLE_INTERVAL", "fast",
     "MEMSPAN_SAMPLE_INTERVAL='fast' is not a number; accepted: a number of seconds > 0"),
    ("MEMSPAN_SAMPLE_INTERVAL", "0",
     "MEMSPAN_SAMPLE_INTERVAL=0.0 is out of range; accepted: a number of seconds > 0"),
    ("MEMSPAN_NVML_INTERVAL", "-1",
     "MEMSPAN_NVML_INTERVAL=-1.0 is out of range; accepted: a number of seconds > 0"),
    ("MEMSPAN_EXPORT_INTERVAL", "soon",
     "MEMSPAN_EXPORT_INTERVAL='soon' is not a number; accepted: a number of seconds > 0"),
    ("MEMSPAN_OUTPUT_MAX_MB", "lots",
     "MEMSPAN_OUTPUT_MAX_MB='lots' is not a number; accepted: a number of MiB > 0"),
    ("MEMSPAN_OOM_ENABLED", "maybe",
     "MEMSPAN_OOM_ENABLED='maybe' is not a boolean; accepted: true/false, 1/0, yes/no, on/off"),
    ("MEMSPAN_BUFFER_SIZE", "1e3",
     "MEMSPAN_BUFFER_SIZE='1e3' is not an integer; accepted: an integer >= 1"),
    ("MEMSPAN_BUFFER_SIZE", "0", "MEMSPAN_BUFFER_SIZE=0 is out of range; accepted: an integer >= 1"),
    ("MEMSPAN_MAX_DUMPS", "-2", "MEMSPAN_MAX_DUMPS=-2 is out of range; accepted: an integer >= 1"),
    ("MEMSPAN_MAX_TOTAL_MB", "big",
     "MEMSPAN_MAX_TOTAL_MB='big' is not an integer; accepted: an integer >= 1"),
    ("MEMSPAN_CUDA_HISTORY", "2",
     "MEMSPAN_CUDA_HISTORY='2' is not a boolean; accepted: true/false, 1/0, yes/no, on/off"),
    ("MEMSPAN_BREADCRUMBS", "y",
     "MEMSPAN_BREADCRUMBS='y' is not a boolean; accepted: true/false, 1/0, yes/no, on/off"),
    ("MEMSPAN_AUTO_PHASES", "enabled",
     "MEMSPAN_AUTO_PHASES='enabled' is not a boolean; accepted: true/false, 1/0, yes/no, on/off"),
    ("MEMSPAN_RSS_METRIC", "nope",
     "MEMSPAN_RSS_METRIC='nope' is not a boolean; accepted: true/false, 1/0, yes/no, on/off"),
    ("MEMSPAN_SPAN_MODE", "fast",
     "span_mode='fast' (MEMSPAN_SPAN_MODE) is not accepted; accepted: deferred, sync, sdk"),
    ("MEMSPAN_STEP_KEEP_EVERY", "0", "MEMSPAN_STEP_KEEP_EVERY=0 is out of range; accepted: an integer >= 1"),
    ("MEMSPAN_STEP_KEEP_FIRST", "-1", "MEMSPAN_STEP_KEEP_FIRST=-1 is out of range; accepted: an integer >= 0"),
    ("MEMSPAN_STEP_KEEP_RETAINED_MB", "-1",
     "MEMSPAN_STEP_KEEP_RETAINED_MB=-1.0 is out of range; accepted: a number of MiB > 0"),
    ("MEMSPAN_STEP_PEAK_INCREASE_MB", "x",
     "MEMSPAN_STEP_PEAK_INCREASE_MB='x' is not a number; accepted: a number of MiB > 0"),
]


@pytest.mark.parametrize(("variable", "value", "message"), BAD_VALUES)
def test_bad_value_names_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        MemspanConfig.from_env({variable: value})
    assert str(raised.value) == message


def test_every_variable_has_a_bad_value_case_or_is_free_text() -> None:
    from memspan import environment_variables as ev

    variables = {v for k, v in vars(ev).items() if k.startswith("MEMSPAN_")}
    covered = {variable for variable, _, _ in BAD_VALUES}
    free_text = {"MEMSPAN_OUTPUT_DIR", "MEMSPAN_DUMP_DIR", "MEMSPAN_REPORTS_DIR", "MEMSPAN_JOB_ID",
                 "MEMSPAN_TRACE_ROOTS"}
    assert variables - covered == free_text


def test_keyword_errors_name_the_keyword() -> None:
    with pytest.raises(ConfigError, match=r"^sample_interval_s=-0.5 is out of range"):
        MemspanConfig(sample_interval_s=-0.5)
    with pytest.raises(ConfigError, match=r"^output_dir='  ' is not usable"):
        MemspanConfig(output_dir="  ")
    with pytest.raises(ConfigError, match=r"unknown memspan setting"):
        MemspanConfig.from_env({}, sampel_interval=1)
