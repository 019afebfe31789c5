"""Counts an operator asks for first: sends by channel and status, enrolments by status, events."""

from __future__ import annotations

import datetime as dt
from typing import Any

import peewee

from db.database import rows
from db.models import Enrolment, InboundEvent, JobRun, Send
from ground.send_states import SendStatus


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


RATE_WINDOW_S = 300  # what "sends per second" means on the console: the last five minutes


def channel_activity(now: dt.datetime) -> dict[str, dict[str, float]]:
    """Per channel: its unfinished sends by status (planned, queued, sending, retrying: the
    database's view of the queues, on both brokers) and its sent-per-second over the last five
    minutes. Two grouped queries, on ``send(status, channel, due_at)`` and ``send(finished_at)``."""
    activity: dict[str, dict[str, float]] = {}
    unfinished = (SendStatus.PLANNED, SendStatus.QUEUED, SendStatus.SENDING, SendStatus.RETRYING)
    for channel, status, count in rows(Send.select(Send.channel, Send.status, peewee.fn.COUNT(Send.id))
                                       .where(Send.status.in_(unfinished)).group_by(Send.channel, Send.status)):
        activity.setdefault(channel, {})[status] = count
    since = now - dt.timedelta(seconds=RATE_WINDOW_S)
    for channel, count in rows(Send.select(Send.channel, peewee.fn.COUNT(Send.id))
                               .where((Send.finished_at >= since) & (Send.status == SendStatus.SENT))
                               .group_by(Send.channel)):
        activity.setdefault(channel, {})["sent_per_s"] = count / RATE_WINDOW_S
    return activity
