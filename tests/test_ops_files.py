"""The ops/ files name only metrics the daemon really exports, and the alert rules are valid."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from ground.metrics import initialise_labels, render
from tests.support.prometheus import require_tool

OPS = Path(__file__).resolve().parents[1] / "ops"
METRIC = re.compile(r"\b(retentiond_[a-z_]+)\b")


def exported_series() -> set[str]:
    """Every series name /metrics can show: counters' _total, histograms' _bucket/_sum/_count..."""
    initialise_labels()
    from ground import metrics

    metrics.HEALTH_STATUS.labels("database").set(0)
    metrics.QUEUE_DEPTH.labels("retentiond.sms").set(0)
    metrics.LEASE_HOLDER.labels("scheduling-tick").set(1)
    metrics.initialise_job_labels("scheduling-tick")
    metrics.WEBHOOK_EVENTS.labels("shop", "accepted")
    metrics.CAMPAIGN_SENDS.labels("welcome", "0", "sent")
    for counter in (metrics.CAMPAIGN_CLICKS, metrics.CAMPAIGN_CONVERSIONS, metrics.CAMPAIGN_REVENUE):
        counter.labels("welcome", "0")
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


def test_promtool_accepts_the_rules() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "rules", str(OPS / "alerts.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# Prometheus attaches these to every series it scrapes (scrape job, target host:port) and renames
# an exported label of the same name to exported_job/exported_instance: rules would select nothing.
TARGET_LABELS = {"job", "instance"}


def exported_label_names() -> dict[str, set[str]]:
    exported_series()
    return {family.name: {label for sample in family.samples for label in sample.labels}
            for family in text_string_to_metric_families(render()[0].decode())}


def test_no_metric_has_a_label_prometheus_sets_on_its_targets() -> None:
    clashing = {name: labels & TARGET_LABELS for name, labels in exported_label_names().items()
                if name.startswith("retentiond_") and labels & TARGET_LABELS}
    assert clashing == {}


def test_every_label_the_ops_files_select_or_group_by_is_exported_or_a_target_label() -> None:
    exported = set().union(*exported_label_names().values()) | TARGET_LABELS | {"le"}
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used: set[str] = set()
    for expr in expressions:
        for matchers in re.findall(r"retentiond_[a-z_]+\{([^}]*)\}", expr):
            used.update(re.findall(r"(\w+)\s*[!=]~?", matchers))
        for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            used.update(label.strip() for label in grouping.split(","))
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"


def test_a_restarted_daemon_reports_its_lease_on_the_same_series(sqlite_url: str) -> None:
    # Given a daemon that ran the tick, then a new one (a restart: a new holder id, host:pid)
    from daemon.jobs import Job, JobRunner
    from db.database import close_database, init_database
    from db.migrate import migrate
    from ground import metrics

    init_database(sqlite_url)
    try:
        migrate()
        for holder in ("host:101", "host:202"):
            assert JobRunner(holder).run_if_due(Job("churn-check", 0.0, lambda: 0)) == 0
    finally:
        close_database()
    # Then one series names the job, and no label value carries the holder id
    series = [sample.labels for family in text_string_to_metric_families(metrics.render()[0].decode())
              for sample in family.samples if sample.name == "retentiond_lease_holder"
              and sample.labels.get("periodic_job") == "churn-check"]
    assert series == [{"periodic_job": "churn-check"}]


def test_the_shipped_scrape_config_targets_the_operators_listener() -> None:
    # /metrics is served on ADMIN_PORT only: a target on the public port would scrape 404s
    from ground.settings import load_settings

    defaults = load_settings(environ={})
    config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"{defaults.admin_host}:{defaults.admin_port}"]
    assert f":{defaults.http_port}" not in (OPS / "prometheus.yml").read_text()
