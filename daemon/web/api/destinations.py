"""``/api/v1/destinations``: where events go out (engine/events_out.py), each with its deliveries
by status and its dead letters (event sends that failed for good: re-queue one with
``POST /api/v1/sends/{id}/requeue`` once the receiver is mended)."""

from __future__ import annotations

from urllib.parse import urlsplit

import peewee

from daemon.web.api.registry import API
from daemon.web.api.types import Out, UtcTime
from db.database import rows
from db.models import Send
from engine.events_out import DESTINATION_PREFIX
from ground.send_states import SendStatus
from ground.settings import Settings

DEAD_LETTERS_SHOWN = 50


class DeadLetterOut(Out):
    send_id: int
    type: str | None
    error: str | None
    attempts: int
    failed_at: UtcTime | None


class DestinationOut(Out):
    name: str
    endpoint: str  # scheme and host only: a URL's path or query may hold a token
    events: list[str]
    deliveries: dict[str, int]  # by send status
    dead_letters: list[DeadLetterOut]  # the newest DEAD_LETTERS_SHOWN


class DestinationsOut(Out):
    destinations: list[DestinationOut]


@API.get("/destinations", tag="events out")
def list_destinations(settings: Settings) -> DestinationsOut:
    """Each configured destination, its deliveries by status and its newest dead letters."""
    recipients = [f"{DESTINATION_PREFIX}{name}" for name in settings.destinations]
    counts: dict[str, dict[str, int]] = {}
    if recipients:
        for recipient, status, count in rows(Send.select(Send.recipient, Send.status, peewee.fn.COUNT(Send.id))
                                             .where(Send.recipient.in_(recipients))
                                             .group_by(Send.recipient, Send.status)):
            counts.setdefault(recipient, {})[status] = int(count)
    out = []
    for name, destination in sorted(settings.destinations.items()):
        recipient = f"{DESTINATION_PREFIX}{name}"
        failed = (Send.select(Send.id, Send.subject, Send.error, Send.attempts, Send.finished_at)
                  .where((Send.recipient == recipient) & (Send.status == SendStatus.FAILED))
                  .order_by(Send.id.desc()).limit(DEAD_LETTERS_SHOWN))
        parts = urlsplit(destination.url)  # checked when the settings were read
        out.append(DestinationOut(
            name=name, endpoint=f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}",
            events=sorted(destination.events), deliveries=counts.get(recipient, {}),
            dead_letters=[DeadLetterOut(send_id=s.id, type=s.subject, error=s.error, attempts=s.attempts,
                                        failed_at=s.finished_at) for s in failed]))
    return DestinationsOut(destinations=out)
