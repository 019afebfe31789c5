"""Counts an operator asks for first: sends by channel and status, enrolments by status, events."""

from __future__ import annotations

from typing import Any

import peewee

from db.database import rows
from db.models import Enrolment, InboundEvent, Send


def overview() -> dict[str, Any]:
    sends: dict[str, dict[str, int]] = {}
    for channel, status, count in rows(Send.select(Send.channel, Send.status, peewee.fn.COUNT(Send.id))
                                       .group_by(Send.channel, Send.status)):
        sends.setdefault(channel, {})[status] = count
    enrolments = dict(rows(Enrolment.select(Enrolment.status, peewee.fn.COUNT(Enrolment.id))
                           .group_by(Enrolment.status)))
    events = dict(rows(InboundEvent.select(InboundEvent.status, peewee.fn.COUNT(InboundEvent.id))
                       .group_by(InboundEvent.status)))
    return {"sends": sends, "enrolments": enrolments, "inbound_events": events}
