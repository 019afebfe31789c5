"""The Prometheus metrics catalogue and its exposition, aggregated over every worker process.

Under ``retentiond run`` the daemon points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
before anything imports prometheus_client; every process writes its samples there and ``/metrics``
merges them (multiprocess mode). Without it (tests, one process) the default registry is used.
Labels carry channels, statuses, sources and outcomes only: never a person's data.

No metric has a ``job`` or ``instance`` label: Prometheus attaches those to every scraped series
itself (the scrape job, the target's host:port) and renames a clashing exported label to
``exported_job``/``exported_instance``, so a rule selecting ``job="scheduling-tick"`` would match
nothing. Periodic jobs are named by ``periodic_job``; which daemon holds a lease is told by the
target's ``instance``, stable across restarts (a holder id carries a pid: a new series per restart).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from ground.channels import CHANNELS
from ground.send_states import SendMetric

SEND_STATUSES: tuple[str, ...] = tuple(SendMetric)  # the status label of SENDS, defined in send_states
# The webhook outcomes dashboards and RetentiondWebhooksRejected read (refusals have more kinds).
WEBHOOK_OUTCOMES = ("accepted", "duplicate", "unauthorized", "invalid", "overloaded", "unavailable")

SENDS = Counter("retentiond_sends", "Sends by channel and outcome.", ["channel", "status"])
# A campaign's funnel (Grafana's funnel panel): labelled by campaign slug and step position, both
# bounded (campaigns are few, steps fewer); counted by engine/campaign_metrics.py.
CAMPAIGN_SENDS = Counter("retentiond_campaign_sends", "A campaign's sends by step and status (planned, sent, "
                         "failed, skipped).", ["campaign", "step", "status"])
CAMPAIGN_CLICKS = Counter("retentiond_campaign_clicks", "Clicks on a campaign's tracked links, by step.",
                          ["campaign", "step"])
CAMPAIGN_CONVERSIONS = Counter("retentiond_campaign_conversions", "Conversions attributed to a campaign's step.",
                               ["campaign", "step"])
CAMPAIGN_REVENUE = Counter("retentiond_campaign_revenue", "Revenue of the conversions attributed to a campaign's step.",
                           ["campaign", "step"])
CAMPAIGN_SEND_STATUSES = ("planned", "sent", "failed", "skipped")
WEBHOOK_EVENTS = Counter("retentiond_webhook_events", "Webhook requests by source and outcome.",
                         ["source", "outcome"])
WEBHOOK_LATENCY = Histogram("retentiond_webhook_latency_seconds",
                            "Time from a webhook request's start to its answer (commit included).", ["source"],
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
HEALTH_STATUS = Gauge("retentiond_health_status", "Health per component: 0 healthy, 1 warning, 2 critical.",
                      ["component"], multiprocess_mode="livemax")
QUEUE_DEPTH = Gauge("retentiond_queue_depth", "Ready messages per RabbitMQ queue (channel queues and dead letters).",
                    ["queue"], multiprocess_mode="livemax")
LEASE_HOLDER = Gauge("retentiond_lease_holder", "1 while this daemon holds a periodic job's lease, else 0.",
                     ["periodic_job"], multiprocess_mode="livemax")
DB_POOL_IN_USE = Gauge("retentiond_db_pool_in_use", "PostgreSQL connections checked out of the pool.",
                       multiprocess_mode="livesum")
OPS_ALERTS = Counter("retentiond_ops_alerts", "Critical health findings recorded as ops alerts.", ["component"])
JOB_RUNS = Counter("retentiond_job_runs", "Periodic job runs by job and outcome.", ["periodic_job", "outcome"])
JOB_OUTCOMES = ("ok", "error")
EVENTS_PROCESSED = Counter("retentiond_events_processed", "Inbound events processed, by outcome.", ["outcome"])
PROVIDER_LATENCY = Histogram("retentiond_provider_latency_seconds", "Duration of one provider call.",
                             ["channel", "provider"],
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PROVIDER_FAILOVERS = Counter("retentiond_provider_failovers", "Times a channel's backup provider took over.",
                             ["channel"])
RATE_LIMIT_WAIT = Histogram("retentiond_rate_limit_wait_seconds",
                            "Time a send waited for its channel's rate-limit slot.", ["channel"],
                            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


def initialise_labels(sources: Iterable[str] = ()) -> None:
    """Make every channel/status series, and each configured webhook source's outcomes, exist at 0,
    so dashboards and rates start from a value (``increase()`` cannot see a counter's first
    increment when the series starts at 1)."""
    for source in sources:
        for outcome in WEBHOOK_OUTCOMES:
            WEBHOOK_EVENTS.labels(source, outcome)
    for channel in CHANNELS:
        PROVIDER_FAILOVERS.labels(channel)
        for status in SEND_STATUSES:
            SENDS.labels(channel, status)


def initialise_job_labels(periodic_job: str) -> None:
    """A periodic job's run counters at 0 before its first run: "no successful run" is then a
    series at 0, which an alert can see, rather than no series at all."""
    for outcome in JOB_OUTCOMES:
        JOB_RUNS.labels(periodic_job, outcome)


def render(pool_in_use: int = 0) -> tuple[bytes, str]:
    """The whole daemon's metrics in the Prometheus text format, and its content type.

    ``pool_in_use`` is read by the caller (the database sits above this floor)."""
    DB_POOL_IN_USE.set(pool_in_use)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
