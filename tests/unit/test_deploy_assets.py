"""The Grafana dashboard, alert rules and Prometheus config refer only to metrics specrag defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]
DEFINED = re.compile(r'"(specrag_[a-z0-9_]+)"')
USED = re.compile(r"ray_(specrag_[a-z0-9_]+?)(?:_bucket|_sum|_count)?\b")


def _defined() -> set[str]:
    names: set[str] = set()
    for path in [*ROOT.glob("serve_app/**/*.py"), *ROOT.glob("deployments/*.py")]:
        names |= set(DEFINED.findall(path.read_text()))
    return names


def _exprs() -> list[str]:
    dash = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    rules = yaml.safe_load((ROOT / "deploy" / "specrag-alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return exprs


def test_every_used_metric_is_defined():
    defined = _defined()
    used = {m for e in _exprs() for m in USED.findall(e)}
    assert used, "the dashboard should use specrag's metrics"
    assert used <= defined, f"unknown metrics: {sorted(used - defined)}"


def test_dashboard_panels_have_unique_ids_and_targets():
    dash = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and all(p["targets"] for p in dash["panels"])


def test_prometheus_uses_ray_service_discovery():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    files = config["scrape_configs"][0]["file_sd_configs"][0]["files"]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]
