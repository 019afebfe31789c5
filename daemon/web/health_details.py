"""``GET /health/details``: healthy / warning / critical per component, and overall the worst.

| component | warning | critical |
|---|---|---|
| database | query latency > 100 ms | unreachable, or > 1 s |
| broker | - | unreachable |
| queues | a channel queue deeper than 10,000 | deeper than 100,000 |
| dead_letters | any dead-lettered message | more than 100 |
| provider_errors | > 5% of the last 5 minutes' provider calls failed or were retried (20 calls at least) | > 25% |
| scheduling_tick | last successful tick older than 30 s (or none yet) | older than 120 s |
| leases | a job's lease expired more than 10 minutes ago (nobody runs it) | - |

Computed at most once per ``HEALTH_DETAILS_CACHE_S`` (5 s; ``CachedDetails``). A critical finding is recorded as an ops alert (table ``ops_alert``, metric, log line) once while it
lasts; the alert is resolved when the component is healthy again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import peewee
import pika
import pika.exceptions

from daemon.web.health import broker_parameters, probe_broker, probe_database
from db.database import db_session, rows
from db.models import Decision, JobRun, Lease, OpsAlert, utcnow
from ground.channels import CHANNELS
from ground.metrics import HEALTH_STATUS, OPS_ALERTS, QUEUE_DEPTH
from ground.send_states import Decided
from ground.settings import Settings

logger = logging.getLogger(__name__)

LEVELS = ("healthy", "warning", "critical")


@dataclass(frozen=True)
class Finding:
    status: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"status": self.status, "detail": self.detail}


def _level(value: float, warning: float, critical: float) -> str:
    return "critical" if value > critical else "warning" if value > warning else "healthy"


def database_finding() -> Finding:
    probe = probe_database()
    if not probe.ok:
        return Finding("critical", probe.detail)
    return Finding(_level(probe.latency_ms, 100, 1000), f"{probe.latency_ms:.1f} ms")


def broker_finding(settings: Settings) -> Finding:
    probe = probe_broker(settings)
    return Finding("healthy" if probe.ok else "critical", probe.detail)


def queue_depths(settings: Settings) -> dict[str, int]:
    """Ready messages per channel queue, its retry queue (.DQ) and dead-letter queue (.XQ)."""
    connection = pika.BlockingConnection(broker_parameters(settings, timeout_s=2))
    depths = {}
    try:
        for queue in (c.queue_name for c in CHANNELS.values()):
            for suffix in ("", ".DQ", ".XQ"):
                name = queue + suffix
                channel = connection.channel()
                try:
                    depths[name] = channel.queue_declare(name, passive=True).method.message_count
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    depths[name] = 0  # not declared yet: empty
    finally:
        connection.close()
    return depths


def queue_findings(settings: Settings) -> tuple[Finding, Finding]:
    if settings.is_memory_broker:
        return Finding("healthy", "in-process broker"), Finding("healthy", "in-process broker")
    try:
        depths = queue_depths(settings)
    except (pika.exceptions.AMQPError, OSError) as exc:
        unknown = Finding("critical", f"broker unreachable ({type(exc).__name__})")
        return unknown, unknown
    for queue, depth in depths.items():
        QUEUE_DEPTH.labels(queue).set(depth)
    ready = {k: v for k, v in depths.items() if not k.endswith(".XQ")}
    dead = {k: v for k, v in depths.items() if k.endswith(".XQ")}
    deepest = max(ready.values(), default=0)
    dead_total = sum(dead.values())
    return (Finding(_level(deepest, 10_000, 100_000), ", ".join(f"{k} {v}" for k, v in ready.items())),
            Finding(_level(dead_total, 0, 100), f"{dead_total} dead-lettered message(s)"))


def provider_errors_finding(now: dt.datetime) -> Finding:
    counts = dict(rows(Decision.select(Decision.outcome, peewee.fn.COUNT(Decision.id))
                       .where(Decision.created_at >= now - dt.timedelta(minutes=5),
                              Decision.outcome.in_((Decided.SENT, Decided.FAILED, Decided.RETRIED)))
                       .group_by(Decision.outcome)))
    calls = sum(counts.values())
    if calls < 20:
        return Finding("healthy", f"{calls} provider call(s) in 5 minutes")
    share = (counts.get(Decided.FAILED, 0) + counts.get(Decided.RETRIED, 0)) / calls
    return Finding(_level(share, 0.05, 0.25), f"{share:.1%} of {calls} calls failed or retried in 5 minutes")


def tick_finding(now: dt.datetime) -> Finding:
    last = (JobRun.select(peewee.fn.MAX(JobRun.finished_at))
            .where(JobRun.job == "scheduling-tick", JobRun.outcome == "ok").scalar())
    if last is None:
        return Finding("warning", "no scheduling tick yet")
    age = (now - last).total_seconds()
    return Finding(_level(age, 30, 120), f"last tick {age:.0f} s ago")


def lease_finding(now: dt.datetime) -> Finding:
    stale = [lease.name for lease in Lease.select()
             if lease.expires_at is not None and lease.expires_at < now - dt.timedelta(minutes=10)]
    return Finding("warning" if stale else "healthy", f"stale: {', '.join(stale)}" if stale else "all picked up")


def details(settings: Settings, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    findings: dict[str, Finding] = {"database": database_finding(), "broker": broker_finding(settings)}
    findings["queues"], findings["dead_letters"] = queue_findings(settings)
    if findings["database"].status != "critical":
        checks: dict[str, Callable[[dt.datetime], Finding]] = {
            "provider_errors": provider_errors_finding, "scheduling_tick": tick_finding, "leases": lease_finding}
        with db_session():
            for name, check in checks.items():
                findings[name] = check(now)
            record_alerts(findings, now)
    overall = max((f.status for f in findings.values()), key=LEVELS.index)
    for name, finding in findings.items():
        HEALTH_STATUS.labels(name).set(LEVELS.index(finding.status))
    return {"status": overall, "checked_at": now.isoformat(timespec="milliseconds") + "Z",
            "components": {k: f.as_dict() for k, f in findings.items()}}


class CachedDetails:
    """``details`` at most once per ``HEALTH_DETAILS_CACHE_S``: each computation opens a broker
    connection and runs queries, and a dashboard refreshing every second (or ten operators, or a
    loop of requests) must not multiply them. Callers that arrive while one is computed wait for it
    and share it; the answer says when it was computed (``checked_at``)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = asyncio.Lock()
        self._value: dict[str, Any] | None = None
        self._computed_at = 0.0

    async def get(self) -> dict[str, Any]:
        async with self._lock:
            if self._value is None or time.monotonic() - self._computed_at >= self._settings.health_details_cache_s:
                self._value = await asyncio.to_thread(details, self._settings)
                self._computed_at = time.monotonic()
            return self._value


def record_alerts(findings: dict[str, Finding], now: dt.datetime) -> None:
    """One open alert per critical component; resolved once it is healthy again."""
    open_alerts = {a.component: a for a in OpsAlert.select().where(OpsAlert.resolved_at.is_null())}
    for component, finding in findings.items():
        alert = open_alerts.get(component)
        if finding.status == "critical" and alert is None:
            OpsAlert.create(component=component, level="critical", message=finding.detail, created_at=now)
            OPS_ALERTS.labels(component).inc()
            logger.error("ops alert: %s is critical: %s", component, finding.detail)
        elif finding.status == "healthy" and alert is not None:
            OpsAlert.update(resolved_at=now).where(OpsAlert.id == alert.id).execute()
            logger.info("ops alert resolved: %s is healthy again", component)
