"""What a claimed send came to, and what that leads to beyond the send's own row: the step's
fallback channel, the enrolment moving on, a log line.

A step is done when its send is sent, skipped, or failed with no fallback to try; then the
enrolment advances (or completes). A deferred send keeps its enrolment waiting; a fallback send
carries the enrolment, and the step is done when the fallback is. The send's own transitions and
the decision log are engine/sends.py's.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from db.database import rows
from db.models import Campaign, CampaignStep, Contact, Enrolment, utcnow
from engine.checks import Verdict
from ground.channels import CHANNELS
from ground.send_states import EnrolmentStatus, Outcome

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedSend:
    """A send this worker holds (status ``sending``), with everything needed to settle it."""

    id: int
    idempotency_key: str
    channel: str
    recipient: str | None
    subject: str | None
    body: str | None
    contact_id: int | None
    campaign_id: int | None
    step_id: int | None
    enrolment_id: int | None
    fallback_of_id: int | None
    attempts: int
    deferrals: int
    due_at: dt.datetime
    queued_at: dt.datetime | None
    claimed_at: dt.datetime | None
    markup: str | None = None  # an email's HTML, a call's TwiML (never journaled, like the text)


@dataclass(frozen=True)
class Result:
    """What a claimed send came to (never ``RATE_LIMITED``: a 429 is settled as ``DEFERRED``)."""

    send: ClaimedSend
    outcome: Outcome
    reason: str | None = None
    error: str | None = None
    until: dt.datetime | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    finished_at: dt.datetime | None = None
    fallback_channel: str | None = None
    fallback_recipient: str | None = None
    invalid_devices: tuple[str, ...] = ()  # push addresses the service said are gone (engine/devices.py)


@dataclass(frozen=True)
class CallOutcome:
    """What one provider call came to: ``SENT``, ``FAILED``, ``RETRYING``, ``RATE_LIMITED`` or
    ``RELEASED`` (never handed to the provider)."""

    send_id: int
    status: Outcome
    finished_at: dt.datetime | None = None
    provider_message_id: str | None = None
    error: str | None = None
    retry_after_s: float | None = None
    provider: str | None = None  # when not the channel's primary provider (failover)
    reason: str | None = None  # why it failed, when not "provider refused"
    invalid_devices: tuple[str, ...] = ()


def from_call(s: ClaimedSend, call: CallOutcome, provider: str) -> Result:
    """The result a provider's answer makes (``provider``: the channel's primary provider)."""
    if call.status == Outcome.SENT:
        note = f"sent by the backup provider {call.provider}" if call.provider and call.provider != provider else None
        return Result(s, Outcome.SENT, provider=call.provider or provider,
                      provider_message_id=call.provider_message_id, finished_at=call.finished_at, reason=note,
                      invalid_devices=call.invalid_devices)
    if call.status == Outcome.RATE_LIMITED:
        wait_s = call.retry_after_s or 1.0
        return Result(s, Outcome.DEFERRED, provider=provider, error=call.error,
                      reason=f"provider asked to wait {wait_s:g} s (429)",
                      until=utcnow() + dt.timedelta(seconds=wait_s))
    if call.status == Outcome.RELEASED:
        return Result(s, Outcome.RELEASED)
    if call.status == Outcome.FAILED:
        return Result(s, Outcome.FAILED, provider=provider, error=call.error, reason=call.reason or "provider refused",
                      invalid_devices=call.invalid_devices)
    return Result(s, Outcome.RETRYING, provider=provider, error=call.error)


def from_verdict(s: ClaimedSend, verdict: Verdict) -> Result:
    """The result of a send the checks held back (``verdict.action`` is not ``send``)."""
    if verdict.action == "defer":
        return Result(s, Outcome.DEFERRED, reason=verdict.reason, until=verdict.until)
    if verdict.action == "fallback":
        return Result(s, Outcome.FELL_BACK, reason=verdict.reason, fallback_channel=verdict.fallback_channel,
                      fallback_recipient=verdict.fallback_recipient)
    return Result(s, Outcome.SKIPPED, reason=verdict.reason)


def step_fallbacks(claimed: Iterable[ClaimedSend]) -> dict[int, str]:
    """The fallback channel of each step in the batch, by step id (sends that are themselves
    fallbacks get none): one query."""
    step_ids = sorted({s.step_id for s in claimed if s.step_id is not None and s.fallback_of_id is None})
    if not step_ids:
        return {}
    return {step_id: channel for step_id, channel in rows(
        CampaignStep.select(CampaignStep.id, CampaignStep.fallback_channel)
        .where(CampaignStep.id.in_(step_ids), CampaignStep.fallback_channel.is_null(False)))}


def fallback_of(s: ClaimedSend, fallbacks: Mapping[int, str]) -> str | None:
    """The channel ``s`` falls back to, given its batch's ``step_fallbacks``."""
    return fallbacks.get(s.step_id) if s.step_id is not None and s.fallback_of_id is None else None


def resolve_fallbacks(results: list[Result], step_fallbacks: Mapping[int, str]) -> list[Result]:
    """A permanent failure tries the step's fallback channel, when the contact has that address."""
    failing = {r.send.id for r in results if r.outcome == Outcome.FAILED and r.send.step_id in step_fallbacks
               and r.send.fallback_of_id is None and r.send.contact_id is not None}
    if not failing:
        return results
    contact_ids = [r.send.contact_id for r in results if r.send.id in failing]
    contacts = {c.id: c for c in Contact.select().where(Contact.id.in_(contact_ids))}
    out = []
    for r in results:
        channel = step_fallbacks.get(r.send.step_id) if r.send.id in failing and r.send.step_id is not None else None
        contact = contacts.get(r.send.contact_id) if channel and r.send.contact_id is not None else None
        address = getattr(contact, CHANNELS[channel].address_field) if contact is not None and channel else None
        if channel and address:
            r = Result(r.send, r.outcome, reason=f"provider refused; falling back to {channel}", error=r.error,
                       provider=r.provider, fallback_channel=channel, fallback_recipient=address)
        out.append(r)
    return out


def log_outcomes(results: Iterable[Result]) -> None:
    """One line for each send held back or failed, so whoever watches the log sees why a message
    did not go: INFO for a deferral or a skip, WARNING for a failure. The send's id, channel and
    campaign are fields of the record (JSON fields, or appended to a text line), the reason is in
    the message (masked like any message). A send that went, or will be retried, gets no line."""
    for r in results:
        context = {"send_id": r.send.id, "channel": r.send.channel, "campaign": r.send.campaign_id}
        if r.outcome == Outcome.DEFERRED:
            logger.info("send deferred until %s: %s", _utc(r.until), r.reason, extra=context)
        elif r.outcome == Outcome.SKIPPED:
            logger.info("send skipped: %s", r.reason, extra=context)
        elif r.outcome == Outcome.FELL_BACK:
            logger.info("send not made on its channel: %s", r.reason, extra=context)
        elif r.outcome == Outcome.FAILED:
            fallback = f" (falling back to {r.fallback_channel})" if r.fallback_channel else ""
            logger.warning("send failed%s: %s", fallback, r.error or r.reason, extra=context)


def _utc(at: dt.datetime | None) -> str:
    """A due time as a reader wants it: UTC, said so (the database keeps naive UTC)."""
    if at is None:
        return "later"
    if at.tzinfo is not None:
        at = at.astimezone(dt.UTC)
    return f"{at:%Y-%m-%d %H:%M:%S} UTC"


def log_failed_send(send_id: int | None, channel: str, campaign_id: int | None, reason: str) -> None:
    """The line for a send that failed before any worker took it (a template error at planning)."""
    logger.warning("send failed: %s", reason, extra={"send_id": send_id, "channel": channel, "campaign": campaign_id})


def advance_enrolments(enrolment_ids: Iterable[int | None], now: dt.datetime) -> int:
    """Move waiting enrolments past the step they were waiting on; complete those at the end."""
    ids = sorted({i for i in enrolment_ids if i is not None})
    if not ids:
        return 0
    waiting = rows(Enrolment.select(Enrolment.id, Enrolment.campaign, Enrolment.next_position)
                   .where(Enrolment.id.in_(ids), Enrolment.status == EnrolmentStatus.WAITING))
    if not waiting:
        return 0
    # with each step, whether its campaign is paused (since this step started: the next one then
    # waits for the resume), in the same query
    steps = rows(CampaignStep.select(CampaignStep.campaign, CampaignStep.position, CampaignStep.delay_s,
                                     Campaign.paused_at)
                 .join(Campaign).where(CampaignStep.campaign.in_(sorted({w[1] for w in waiting}))))
    delays = {(c, p): d for c, p, d, _ in steps}
    paused = {c for c, _, _, paused_at in steps if paused_at is not None}
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for enrolment_id, campaign_id, position in waiting:
        groups[(campaign_id, position + 1)].append(enrolment_id)
    changed = 0
    for (campaign_id, position), members in groups.items():
        delay = delays.get((campaign_id, position))
        if delay is None:
            update = {"status": EnrolmentStatus.COMPLETED, "next_position": position, "next_due_at": None, "finished_at": now}
        else:
            update = {"status": EnrolmentStatus.PAUSED if campaign_id in paused else EnrolmentStatus.ACTIVE,
                      "next_position": position, "next_due_at": now + dt.timedelta(seconds=delay)}
        changed += (Enrolment.update(update)
                    .where(Enrolment.id.in_(members), Enrolment.status == EnrolmentStatus.WAITING).execute())
    return changed
