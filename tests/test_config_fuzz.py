"""Property-based tests of every configuration parser: whatever the text or value, the only
error that comes out is ConfigError, whose message names the variable; what is accepted is in
the declared range; nothing is created on disk by parsing."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memspan import ConfigError, MemspanConfig
from memspan import environment_variables as ev
from memspan.analysis.thresholds import LeakThresholds
from memspan.bootstrap import validate_otel_environment
from memspan.resource import rank_identity

FUZZ = settings(max_examples=150, deadline=None)
NAMES = sorted(ev.REGISTRY)

# Text that looks like what people type, plus anything at all.
numberish = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.sampled_from(["", " ", "1e-300", "1e23", "inf", "-inf", "nan", "0x10", "1_000", "٣",
                     "true", "off", "1e999", "-0", "+5", " 7 ", "\x00", "5\n"]),
)
anything = st.one_of(numberish, st.text(max_size=60),
                     st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
urlish = st.builds(lambda scheme, host, port, path: f"{scheme}{host}{port}{path}",
                   st.sampled_from(["http://", "https://", "grpc://", "", "http:/", "HTTP://"]),
                   st.sampled_from(["localhost", "[::1", "[::1]", "127.0.0.1", "", "a b", "%zz",
                                    "user:pw@host", "[fe80::1%eth0]"]),
                   st.sampled_from(["", ":4317", ":0", ":99999", ":-1", ":abc", ":"]),
                   st.sampled_from(["", "/", "/v1/traces", "?q=1", "#x", "/\x00"]))


def in_declared_range(variable: ev.Variable, value: Any) -> bool:
    if variable.kind in ("seconds", "mib", "bytes", "ratio", "int"):
        assert variable.minimum is not None and variable.maximum is not None
        return math.isfinite(value) and variable.minimum <= value <= variable.maximum
    if variable.kind == "bool":
        return isinstance(value, bool)
    if variable.kind == "path":
        return isinstance(value, str) and os.path.isabs(value)
    return isinstance(value, str)


@FUZZ
@given(name=st.sampled_from(NAMES), raw=anything)
def test_every_variable_parses_or_names_itself(name: str, raw: str) -> None:
    variable = ev.REGISTRY[name]
    try:
        value = variable.parse(raw)
    except ConfigError as error:
        assert str(error).startswith(f"{name}=")
        assert "accepted: " in str(error)
        return
    assert in_declared_range(variable, value), (name, raw, value)


@FUZZ
@given(name=st.sampled_from([n for n, v in ev.REGISTRY.items() if v.kind == "url"]), raw=urlish)
def test_endpoints_parse_or_name_themselves(name: str, raw: str) -> None:
    try:
        value = ev.read(name, {name: raw})
    except ConfigError as error:
        assert str(error).startswith(f"{name}=")
        return
    text = "" if value is None else value.strip()
    assert "://" not in text or text.split("://", 1)[0].lower() in ("http", "https")


@FUZZ
@given(env=st.dictionaries(st.sampled_from(NAMES), anything, max_size=8))
def test_from_env_only_raises_config_error(env: dict[str, str]) -> None:
    try:
        config = MemspanConfig.from_env(env)
    except ConfigError as error:
        assert any(str(error).startswith(f"{name}=") for name in env)
        return
    assert config.output_max_bytes >= 1
    assert all(os.path.isabs(p) for p in (config.output_dir, config.dump_dir, config.reports_dir))


values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                   st.binary(max_size=8), st.lists(st.integers(), max_size=2))


@FUZZ
@given(setting=st.sampled_from(sorted(ev.settings())), value=values)
def test_keyword_settings_only_raise_config_error(setting: str, value: Any) -> None:
    try:
        config = MemspanConfig(**{setting: value})
    except ConfigError as error:
        assert str(error).startswith(f"{setting}=")
        return
    assert in_declared_range(ev.settings()[setting], getattr(config, setting)) or (
        value is None and setting == "job_id")


@FUZZ
@given(env=st.dictionaries(st.sampled_from([n for n in NAMES if n.startswith("OTEL_")]),
                           st.one_of(anything, urlish), max_size=6))
def test_otel_validation_only_raises_config_error(env: dict[str, str]) -> None:
    try:
        validate_otel_environment(env)
    except ConfigError as error:
        assert any(str(error).startswith(f"{name}=") for name in env)


@FUZZ
@given(env=st.dictionaries(st.sampled_from([n for group in ev.RANK_VARIABLES for n in group]),
                           numberish, max_size=6))
def test_rank_variables_only_raise_config_error(env: dict[str, str]) -> None:
    try:
        identity = rank_identity(env)
    except ConfigError:
        return
    assert all(isinstance(v, int) and v >= 0 for v in identity.values())


@FUZZ
@given(env=st.dictionaries(st.sampled_from(sorted(ev.LEAK_THRESHOLD_FIELDS)), numberish,
                           max_size=4))
def test_accepted_leak_values_make_valid_thresholds(env: dict[str, str]) -> None:
    try:
        values = ev.leak_threshold_values(env)
    except ConfigError:
        return
    LeakThresholds(**values)  # type: ignore[arg-type]  # the declared ranges fit its own checks


@pytest.fixture(scope="module")
def empty_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parse-writes-nothing")


@FUZZ
@given(raw=st.text(max_size=40))
def test_parsing_a_path_creates_nothing(raw: str, empty_dir: Path) -> None:
    cwd = os.getcwd()
    os.chdir(empty_dir)
    try:
        try:
            ev.REGISTRY[ev.MEMSPAN_OUTPUT_DIR].parse(raw)
        except ConfigError:
            pass
        assert os.listdir(empty_dir) == []
    finally:
        os.chdir(cwd)
