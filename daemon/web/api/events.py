"""``/api/v1/events``: the inbound events, by source and status, and the replay of a failed one."""

from __future__ import annotations

from pydantic import Field

from daemon.web.api.problems import Problem
from daemon.web.api.registry import API
from daemon.web.api.types import Out, Page, PageQuery, PathIn, UtcTime, page_of
from db.models import InboundEvent
from engine.manual import replay_event
from ground.vocabulary import InboundStatus


class EventOut(Out):
    """An inbound event without its payload (personal data): its kind, fate and reason."""

    id: int
    source: str
    event_id: str = Field(description="the sender's id of the event (deduplication)")
    type: str | None
    status: str
    error: str | None = Field(description="why it failed, why it is unmappable, or the notes of its processing")
    contact_id: int | None
    received_at: UtcTime
    processed_at: UtcTime | None


class EventQuery(PageQuery):
    source: str | None = Field(None, min_length=1, max_length=64)
    status: InboundStatus | None = None


class EventPath(PathIn):
    id: int = Field(ge=1, le=2**63 - 1)


@API.get("/events", tag="events")
def list_events(query: EventQuery) -> Page[EventOut]:
    """Inbound events, newest first, by source and status (``failed``, ``unmappable``...)."""
    select = InboundEvent.select(*(getattr(InboundEvent, name) for name in EventOut.model_fields))
    if query.source is not None:
        select = select.where(InboundEvent.source == query.source)
    if query.status is not None:
        select = select.where(InboundEvent.status == query.status)
    found, cursor = page_of(select, InboundEvent.id, query, newest_first=True)
    return Page[EventOut](items=[EventOut.model_validate(e) for e in found], next_cursor=cursor)


@API.post("/events/{id}/replay", tag="events", errors=(404, 409))
def replay(path: EventPath) -> EventOut:
    """A failed event back to ``pending``: the event processor applies it again, in order (409 for
    an event in another status: a processed one is never applied twice)."""
    try:
        event = replay_event(path.id)
    except ValueError as exc:
        raise Problem(409, str(exc)) from None
    if event is None:
        raise Problem(404, f"no event {path.id}")
    return EventOut.model_validate(event)
