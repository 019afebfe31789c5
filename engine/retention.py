"""Retention cleanup: old rows deleted table by table, in bounded batches, so writers are never
blocked for long (``retentiond cleanup [--dry-run]``, and the daily ``retention-cleanup`` job).

| table | kept | which rows go |
|---|---|---|
| send log (``send``) and its decision log | ``RETENTION_SENDS_DAYS`` (30) | finished sends (sent, failed, skipped) |
| decision log of those sends | with them | decisions older than the same window |
| inbound events | ``RETENTION_EVENTS_DAYS`` (90) | processed, unmappable or failed events (never pending) |
| job runs | ``RETENTION_JOB_RUNS_DAYS`` (30) | finished runs |
| ops alerts | ``RETENTION_EVENTS_DAYS`` (90) | resolved or old alerts |

A dry run counts with the same conditions the real run deletes with.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from db.database import database, db_session
from db.models import Decision, InboundEvent, JobRun, OpsAlert, Send
from ground.send_states import FINISHED
from ground.settings import Settings
from ground.vocabulary import InboundStatus

BATCH = 5000


@dataclass(frozen=True)
class Rule:
    name: str
    model: Any
    condition: Callable[[dt.datetime, Settings], Any]


def _before(days: Callable[[Settings], int]) -> Callable[[dt.datetime, Settings], dt.datetime]:
    return lambda now, settings: now - dt.timedelta(days=days(settings))


_sends = _before(lambda s: s.retention_sends_days)
_events = _before(lambda s: s.retention_events_days)
_runs = _before(lambda s: s.retention_job_runs_days)

RULES = [
    # decisions first: they point at the sends about to go
    Rule("decision log", Decision, lambda now, s: Decision.created_at < _sends(now, s)),
    Rule("send log", Send, lambda now, s: (Send.finished_at < _sends(now, s))
         & Send.status.in_(FINISHED)),
    Rule("inbound events", InboundEvent, lambda now, s: (InboundEvent.received_at < _events(now, s))
         & (InboundEvent.status != InboundStatus.PENDING)),
    Rule("job runs", JobRun, lambda now, s: (JobRun.started_at < _runs(now, s)) & JobRun.finished_at.is_null(False)),
    Rule("ops alerts", OpsAlert, lambda now, s: OpsAlert.created_at < _events(now, s)),
]


def cleanup(settings: Settings, now: dt.datetime, dry_run: bool = False) -> list[tuple[str, int]]:
    """Delete (or, dry, count) what is past its retention; (table, rows) in order."""
    report = []
    with db_session():
        for rule in RULES:
            condition = rule.condition(now, settings)
            if dry_run:
                report.append((rule.name, rule.model.select().where(condition).count()))
                continue
            deleted = 0
            while True:
                with database.atomic():  # one short transaction per batch
                    ids = [r.id for r in rule.model.select(rule.model.id).where(condition).limit(BATCH)]
                    if not ids:
                        break
                    deleted += rule.model.delete().where(rule.model.id.in_(ids)).execute()
            report.append((rule.name, deleted))
    return report
