"""deploy/monitoring: the alert rules and the Grafana dashboard name only metrics Civicflow exposes
(the listener's and the batch collector's), and Prometheus's promtool accepts every expression,
the scrape configuration, and the rules' own unit tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from civicflow.ingest.metrics import ListenerMetrics
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.metrics import BatchCollector

pytestmark = pytest.mark.unit
MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
RULES = MONITORING / "civicflow-alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed: apt-get install prometheus (Debian's package)"
)
METRIC = re.compile(r"\bcivicflow_[a-z0-9_]+\b|\bup(?=\{)")  # ours, and Prometheus's own `up{...}`
GRAFANA_RANGES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1d"}


def exposed() -> set[str]:
    """Every sample name the listener's registry and the batch collector expose."""
    names = set()
    for family in ListenerMetrics().registry.collect():  # prometheus_client's own counters
        names |= (
            {f"{family.name}_total", f"{family.name}_created"} if family.type == "counter" else {family.name}
        )
    for family in BatchCollector(Layout(Path("unused"))).describe():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, *map(str, args)], cwd=MONITORING, capture_output=True, text=True, timeout=60, check=False
    )


def alert_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {rule["alert"]: rule["expr"] for group in doc["groups"] for rule in group["rules"]}


def dashboard_exprs() -> dict[str, str]:
    """Each PromQL expression of the dashboard (panel targets, and the series its variables list
    label values of), with Grafana's range variables replaced by durations."""
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = {}
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            exprs[f"panel {panel['id']} {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *[a-z_]+\)", variable["query"]["query"])
            assert match, variable["query"]
            exprs[f"variable {variable['name']}"] = match.group(1)
    for name, expr in exprs.items():
        for variable, duration in GRAFANA_RANGES.items():
            expr = expr.replace(variable, duration)
        exprs[name] = expr
    return exprs


def test_the_metric_names_of_rules_and_dashboard_exist():
    names = exposed() | {"up"}
    # both sides' metrics are known by name: a sample of each kind
    assert {
        "civicflow_listener_messages_received_total",
        "civicflow_listener_closed_segments_backlog",
        "civicflow_stage_segments_total",
        "civicflow_dataset_freshness_seconds",
    } <= names
    for source, exprs in (("rule", alert_exprs()), ("dashboard", dashboard_exprs())):
        assert exprs
        for name, expr in exprs.items():
            used = set(METRIC.findall(expr))
            assert used, f"{source} {name} names no metric: {expr}"
            assert used <= names, f"{source} {name} names metrics nothing exposes: {sorted(used - names)}"


def test_the_dashboard_reads_one_prometheus_chosen_on_import():
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    [source] = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert (source["name"], source["query"]) == ("datasource", "prometheus")
    chosen = {"type": "prometheus", "uid": "${datasource}"}
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == chosen, panel["title"]
            assert all(t["datasource"] == chosen for t in panel["targets"]), panel["title"]


def test_the_rules_name_the_jobs_of_the_scrape_configuration():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"civicflow-listener", "civicflow-batch"}
    named = {job for expr in alert_exprs().values() for job in re.findall(r'job="([^"]+)"', expr)}
    assert named == jobs


@needs_promtool
def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in checked.stdout
    tested = promtool("test", "rules", "civicflow-alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_expression(tmp_path):
    """Each expression as a recording rule: `promtool check rules` parses it as Prometheus would."""
    exprs = dashboard_exprs()
    rules = [
        {"record": f"civicflow:dashboard:expr_{i}", "expr": expr} for i, expr in enumerate(exprs.values())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    checked = promtool("check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr + "\n" + "\n".join(exprs.values())
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout
