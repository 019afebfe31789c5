"""The ops/ files name only metrics the daemon really exports, and the alert rules are valid."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import initialise_labels, render

OPS = Path(__file__).resolve().parents[1] / "ops"
METRIC = re.compile(r"\b(retentiond_[a-z_]+)\b")


def exported_series() -> set[str]:
    """Every series name /metrics can show: counters' _total, histograms' _bucket/_sum/_count..."""
    initialise_labels()
    from daemon import metrics

    metrics.HEALTH_STATUS.labels("database").set(0)
    metrics.QUEUE_DEPTH.labels("retentiond.sms").set(0)
    metrics.LEASE_HOLDER.labels("scheduling-tick", "host:1").set(1)
    names: set[str] = set()
    for family in text_string_to_metric_families(render()[0].decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    exported = exported_series()
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in METRIC.findall(target["expr"])}
    assert used, "the dashboard queries no retentiond metric"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_every_alert_names_an_exported_metric() -> None:
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    exported = exported_series()
    used = {name for group in rules["groups"] for rule in group["rules"] for name in METRIC.findall(rule["expr"])}
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) not installed")
def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(OPS / "alerts.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
