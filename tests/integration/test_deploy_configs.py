"""The deploy files are correct by construction: every name they use is one memspan emits,
every pipeline component is defined, every mounted file exists."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from memspan import names

from .promnames import emitted_prometheus_names

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COLLECTOR_CONFIGS = [ROOT / "otel-collector-config.yaml", DEPLOY / "otel-collector-gateway.yaml",
                     DEPLOY / "otel-collector-agent.yaml"]
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "le", "without", "avg",
                "max", "min", "count", "on", "ignoring", "group_left", "group_right",
                "max_over_time"}


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana/dashboards/memspan.json").read_text())


def queried_metrics(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)       # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)      # ranges
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r'"[^"]*"', "", expr)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("__")}


def unknown_dashboard_metrics(board: dict[str, Any], emitted: set[str]) -> list[str]:
    """Each panel or template query that names a metric memspan does not emit (or none)."""
    problems = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            metrics = queried_metrics(target["expr"])
            if not metrics:
                problems.append(f"panel {panel['title']!r} queries no metric")
            for unknown in sorted(metrics - emitted):
                problems.append(f"panel {panel['title']!r} queries {unknown}")
    for template in board["templating"]["list"]:
        metrics = queried_metrics(template["query"].replace("label_values", ""))
        for unknown in sorted(metrics - {"service_name", "memspan_rank"} - emitted):
            problems.append(f"template {template.get('name')!r} queries {unknown}")
    return problems


def test_every_dashboard_query_uses_metrics_memspan_emits() -> None:
    emitted = emitted_prometheus_names()
    board = dashboard()
    assert unknown_dashboard_metrics(board, set(emitted)) == []
    used = {m for panel in board["panels"] for t in panel["targets"]
            for m in queried_metrics(t["expr"])}
    # the panels the issue asks for
    otel_used = {emitted[m] for m in used}
    for required in (names.GPU_MEMORY_USAGE, names.TORCH_ALLOCATED, names.PROCESS_MEMORY_USAGE,
                     names.CGROUP_MEMORY_LIMIT, names.PHASE_MEMORY_PEAK, names.OOM_COUNT,
                     names.RECORDER_DROPPED):
        assert required in otel_used, required


def test_a_dashboard_naming_a_metric_memspan_does_not_emit_is_caught() -> None:
    """The check above is not vacuous: the real dashboard with one metric misspelled (in a
    query with label matchers, a range and a grouping) fails it, naming the metric."""
    emitted = set(emitted_prometheus_names())
    board = dashboard()
    target = next(t for p in board["panels"] for t in p["targets"]
                  if "memspan_phase_memory_peak_bytes_bucket" in t["expr"])
    target["expr"] = target["expr"].replace("memspan_phase_memory_peak_bytes_bucket",
                                            "memspan_phase_memroy_peak_bytes_bucket")
    problems = unknown_dashboard_metrics(board, emitted)
    assert len(problems) == 1 and "memspan_phase_memroy_peak_bytes_bucket" in problems[0]


def test_the_phase_peak_panel_shows_exemplars() -> None:
    panels = [p for p in dashboard()["panels"]
              if any("memspan_phase_memory_peak_bytes_bucket" in t["expr"] for t in p["targets"])]
    assert panels and all(t["exemplar"] for p in panels for t in p["targets"])


@pytest.mark.parametrize("path", COLLECTOR_CONFIGS, ids=lambda p: p.name)
def test_collector_pipelines_reference_defined_components(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    service = config["service"]
    for extension in service.get("extensions", []):
        assert extension in config.get("extensions", {}), extension
    assert service["pipelines"]
    for pipeline_name, pipeline in service["pipelines"].items():
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                assert component in config.get(section, {}), f"{pipeline_name}: {component}"
        processors = pipeline.get("processors", [])
        assert processors[0] == "memory_limiter", f"{pipeline_name}: memory_limiter must be first"
        assert processors[-1] == "batch", f"{pipeline_name}: batch must be last"


@pytest.mark.parametrize("path", [COLLECTOR_CONFIGS[0], COLLECTOR_CONFIGS[1]], ids=lambda p: p.name)
def test_tail_sampling_keeps_every_oom_and_error(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    policies = config["processors"]["tail_sampling"]["policies"]
    status = [p for p in policies if p["type"] == "status_code"]
    assert status and status[0]["status_code"]["status_codes"] == ["ERROR"]
    conditions = [c for p in policies if p["type"] == "ottl_condition"
                  for c in p["ottl_condition"].get("span", []) + p["ottl_condition"].get("spanevent", [])]
    mentioned = {m for c in conditions for m in re.findall(r'"([a-z0-9_.]+)"', c)}
    assert names.OOM_DUMP_PATH in mentioned and names.OOM_EVENT in mentioned
    known = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
    assert mentioned <= known, f"tail sampling names unknown attributes: {mentioned - known}"
    assert [p for p in policies if p["type"] == "probabilistic"]
    (evidence,) = [p for p in policies if p["type"] == "string_attribute"]
    assert evidence["string_attribute"]["key"] == names.STEP_KEEP_REASON
    from memspan.phases import step_sampling

    assert set(evidence["string_attribute"]["values"]) == {
        step_sampling.ERROR, step_sampling.OOM, step_sampling.NEW_PEAK, step_sampling.RETAINED}
    wait = int(str(config["processors"]["tail_sampling"]["decision_wait"]).rstrip("s"))
    assert wait >= 10  # a step trace is complete well within it


def test_agent_routes_traces_by_trace_id() -> None:
    config = yaml.safe_load((DEPLOY / "otel-collector-agent.yaml").read_text())
    assert config["exporters"]["loadbalancing/traces"]["routing_key"] == "traceID"


def test_compose_mounts_existing_files_and_pins_images() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    for name, service in compose["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
    prometheus = compose["services"]["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in prometheus


def test_grafana_sends_exemplars_to_jaeger_and_jaeger_links_dumps() -> None:
    datasources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/datasources.yaml").read_text())["datasources"]
    by_uid = {d["uid"]: d for d in datasources}
    destinations = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destinations[0]["datasourceUid"] == "jaeger" and by_uid["jaeger"]["type"] == "jaeger"
    links = json.loads((DEPLOY / "jaeger/ui-config.json").read_text())["linkPatterns"]
    assert {link["key"] for link in links} == {names.OOM_DUMP_PATH, names.FILE_PATH}
    jaeger = yaml.safe_load((DEPLOY / "jaeger/config.yaml").read_text())
    assert jaeger["extensions"]["jaeger_query"]["ui"]["config_file"] == "/etc/jaeger/ui-config.json"
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["otel-collector:8889"]
