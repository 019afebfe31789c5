"""Counts an operator asks for first: sends by channel and status, enrolments by status, events."""

from __future__ import annotations

from typing import Any

import peewee

from db.database import rows
from db.models import Enrolment, InboundEvent, JobRun, Send


def overview() -> dict[str, Any]:
    sends: dict[str, dict[str, int]] = {}
    for channel, status, count in rows(Send.select(Send.channel, Send.status, peewee.fn.COUNT(Send.id))
                                       .group_by(Send.channel, Send.status)):
        sends.setdefault(channel, {})[status] = count
    enrolments = dict(rows(Enrolment.select(Enrolment.status, peewee.fn.COUNT(Enrolment.id))
                           .group_by(Enrolment.status)))
    events = dict(rows(InboundEvent.select(InboundEvent.status, peewee.fn.COUNT(InboundEvent.id))
                       .group_by(InboundEvent.status)))
    jobs = {}
    for job in rows(JobRun.select(JobRun.job).distinct()):
        last = JobRun.select().where(JobRun.job == job[0]).order_by(JobRun.started_at.desc()).first()
        if last is not None:
            jobs[job[0]] = {"last_started": last.started_at.isoformat(), "instance": last.instance,
                            "outcome": last.outcome, "items": last.items, "error": last.error}
    return {"sends": sends, "enrolments": enrolments, "inbound_events": events, "jobs": jobs}
