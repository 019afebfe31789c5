"""``/api/v1/sends``: the outbox and send log, by contact, campaign, step, channel and status; a
failed (dead-lettered) send re-queued."""

from __future__ import annotations

from pydantic import Field

from daemon.web.api.problems import Problem
from daemon.web.api.registry import API
from daemon.web.api.types import Out, Page, PageQuery, PathIn, UtcTime, page_of
from db.models import Send, utcnow
from engine.sends import NotRequeued, requeue_failed
from ground.channels import ChannelName
from ground.send_states import SendStatus


class SendOut(Out):
    id: int
    channel: str
    status: str
    contact_id: int | None
    campaign_id: int | None
    step_id: int | None
    provider: str | None
    attempts: int
    deferrals: int
    reason: str | None
    error: str | None
    provider_message_id: str | None
    delivery_status: str | None
    due_at: UtcTime
    created_at: UtcTime
    finished_at: UtcTime | None


class SendQuery(PageQuery):
    contact_id: int | None = Field(None, ge=1, le=2**63 - 1)
    campaign_id: int | None = Field(None, ge=1, le=2**63 - 1)
    step_id: int | None = Field(None, ge=1, le=2**63 - 1)
    channel: ChannelName | None = None
    status: SendStatus | None = None


@API.get("/sends", tag="sends")
def list_sends(query: SendQuery) -> Page[SendOut]:
    """Sends, newest first, filtered by contact, campaign, step, channel and status. The message
    itself (recipient, subject, body) is not listed: it is personal data."""
    select = Send.select(*(getattr(Send, name) for name in SendOut.model_fields))
    for name, field in (("contact_id", Send.contact), ("campaign_id", Send.campaign), ("step_id", Send.step),
                        ("channel", Send.channel), ("status", Send.status)):
        value = getattr(query, name)
        if value is not None:
            select = select.where(field == value)
    found, cursor = page_of(select, Send.id, query, newest_first=True)
    return Page[SendOut](items=[SendOut.model_validate(s) for s in found], next_cursor=cursor)


class SendPath(PathIn):
    id: int = Field(ge=1, le=2**63 - 1)


@API.post("/sends/{id}/requeue", tag="sends", errors=(404, 409))
def requeue(path: SendPath) -> SendOut:
    """A failed send (retries exhausted, dead-lettered, or failed for good) back to the outbox,
    due now, with the same idempotency key: once its cause is mended (a provider's credentials).
    409 for a send in any other status, one whose failure fell back to another channel, or one of
    an archived campaign. Its message in the channel's ``.XQ`` queue is stale (the
    database is the truth): purge it in the management UI."""
    if not Send.select().where(Send.id == path.id).exists():
        raise Problem(404, f"no send {path.id}")
    try:
        return SendOut.model_validate(requeue_failed(path.id, utcnow()))
    except NotRequeued as exc:
        raise Problem(409, str(exc)) from None
