"""Expiring senders' event ids: a webhook id deduplicates for ``EVENT_ID_RETENTION_DAYS`` (30);
after that the row's id is released (renamed ``expired:<row id>``) in bounded batches, so a sender
may reuse it, while the event itself stays until the retention cleanup removes it."""

from __future__ import annotations

import datetime as dt

import peewee

from db.database import database, db_session
from db.models import InboundEvent
from ground.settings import Settings
from ground.vocabulary import InboundStatus

BATCH = 5000


def expire_event_ids(settings: Settings, now: dt.datetime, max_batches: int = 20) -> int:
    cutoff = now - dt.timedelta(days=settings.event_id_retention_days)
    released = 0
    with db_session():
        for _ in range(max_batches):
            with database.atomic():
                ids = [e.id for e in InboundEvent.select(InboundEvent.id)
                       .where(InboundEvent.received_at < cutoff, InboundEvent.status != InboundStatus.PENDING,
                              ~InboundEvent.event_id.startswith("expired:"))
                       .limit(BATCH)]
                if not ids:
                    break
                released += (InboundEvent.update(event_id=peewee.SQL("'expired:' || CAST(id AS TEXT)"))
                             .where(InboundEvent.id.in_(ids)).execute())
    return released
