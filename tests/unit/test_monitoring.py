"""monitoring/: the alert rules, the scrape config and the Grafana dashboard are well formed, name only metrics that
bookfeed exports (checked against real scrapes in tests/e2e/test_operations.py) or that Prometheus and node-exporter
make, and every alert is explained in the README's Operations section."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
RULES = MONITORING / "prometheus" / "rules.yml"
SCRAPES = MONITORING / "prometheus" / "prometheus.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "bookfeed.json"
README = ROOT / "README.md"
# Series that Prometheus (`up`) and node-exporter (PostgreSQL's volume) export, not bookfeed.
EXTERNAL = {"up", "node_filesystem_avail_bytes", "node_filesystem_size_bytes"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}
_IDENT = re.compile(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*(?![\w(])(?!\s*\()")


def _yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords, label names (in
    `{...}` or after by/without/on/ignoring), strings or durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    return {m for m in _IDENT.findall(expr) if m not in _KEYWORDS}


def rule_expressions() -> list[str]:
    return [str(r["expr"]) for g in _yaml(RULES)["groups"] for r in g["rules"]]


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def metric_names_used() -> set[str]:
    """Every bookfeed metric named by the alert rules and the dashboard."""
    names: set[str] = set()
    for expr in rule_expressions() + dashboard_expressions():
        names |= metric_names(expr)
    return {n for n in names if n not in EXTERNAL}


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, queue) (rate(bookfeed_x_bucket{job="a b", le!="1"}[5m:30s]))) > 1e-9 '
        "and on (instance) bookfeed_y or time() - max without (stream) (bookfeed_z) offset 5m"
    )
    assert metric_names(expr) == {"bookfeed_x_bucket", "bookfeed_y", "bookfeed_z"}


def test_rules_and_dashboard_name_only_bookfeed_or_known_external_metrics() -> None:
    used = metric_names_used()
    assert {n for n in used if not n.startswith("bookfeed_")} == set()
    assert len(used) >= 20  # the parser found the dashboard's and the rules' metrics


def test_every_rule_is_complete() -> None:
    rules = [r for g in _yaml(RULES)["groups"] for r in g["rules"]]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
    # The alerts the operations issue asks for.
    for wanted in ("StreamStalled", "FeedDown", "QueueGrowing", "AveragesStale", "RejectedRateHigh", "DiskFilling"):
        assert any(wanted in n for n in names), wanted


def test_scrape_config_reads_the_rules_and_has_every_job_the_rules_name() -> None:
    config = _yaml(SCRAPES)
    assert config["rule_files"] == ["/etc/prometheus/rules.yml"]
    jobs = {c["job_name"] for c in config["scrape_configs"]}
    named = {j for expr in rule_expressions() for j in re.findall(r'job="([^"]+)"', expr)}
    assert named <= jobs


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    datasources = _yaml(MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    uid = datasources[0]["uid"]
    panels = json.loads(DASHBOARD.read_text())["panels"]
    graphs = [p for p in panels if p["type"] != "row"]
    assert graphs and all(p["datasource"]["uid"] == uid for p in graphs)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))


def test_readme_operations_explains_every_alert() -> None:
    section = README.read_text().split("## Operations", 1)[1].split("\n## ", 1)[0]
    for g in _yaml(RULES)["groups"]:
        for r in g["rules"]:
            assert f"`{r['alert']}`" in section, r["alert"]
