"""Settling a batch of sends: their new state, the decision log, fallback sends, and enrolments
moving on to their next step — in one transaction, a constant number of statements per batch.

A step is done when its send is sent, skipped, or failed with no fallback to try; then the
enrolment advances (or completes). A deferred send keeps its enrolment waiting; a fallback send
carries the enrolment, and the step is done when the fallback is.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from db.bulk import insert_many
from db.database import database, is_postgres, rows
from db.models import CampaignStep, Contact, Decision, Enrolment, Send
from db.queries import settle_sends
from ground.channels import CHANNELS

logger = logging.getLogger(__name__)

# what a send's status becomes for each outcome, and what the decision log calls it
_FINAL = {"sent", "failed", "skipped", "fell_back"}


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


@dataclass(frozen=True)
class Result:
    send: ClaimedSend
    outcome: str  # sent | failed | retrying | released | deferred | skipped | fell_back
    reason: str | None = None
    error: str | None = None
    until: dt.datetime | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    finished_at: dt.datetime | None = None
    fallback_channel: str | None = None
    fallback_recipient: str | None = None


def _row(r: Result, now: dt.datetime) -> tuple[Any, ...]:
    s = r.send
    # (id, status, provider, provider_message_id, error, reason, finished_at, due_at, attempts,
    #  deferrals, claimed_at, queued_at) -- see db.queries.SETTLE_COLUMNS
    if r.outcome == "sent":
        return (s.id, "sent", r.provider, r.provider_message_id, None, None, r.finished_at or now, s.due_at,
                s.attempts, s.deferrals, s.claimed_at, s.queued_at)
    if r.outcome == "failed":
        return (s.id, "failed", r.provider, None, r.error, r.reason or "provider refused", now, s.due_at,
                s.attempts, s.deferrals, s.claimed_at, s.queued_at)
    if r.outcome == "retrying":
        return (s.id, "retrying", r.provider, None, r.error, None, None, s.due_at,
                s.attempts, s.deferrals, s.claimed_at, now)
    if r.outcome == "released":  # handed back unsent at shutdown: the claim did not count
        return (s.id, "queued", None, None, None, None, None, s.due_at,
                s.attempts - 1, s.deferrals, None, s.queued_at)
    if r.outcome == "deferred":  # back to the outbox with a new due time; no attempt spent
        return (s.id, "planned", r.provider, None, r.error, r.reason, None, r.until,
                s.attempts - 1, s.deferrals + 1, None, None)
    if r.outcome in ("skipped", "fell_back"):
        return (s.id, "skipped", None, None, None, r.reason, now, s.due_at,
                s.attempts - 1, s.deferrals, s.claimed_at, s.queued_at)
    raise ValueError(f"unknown outcome {r.outcome!r}")


_DECISION_NAMES = {"sent": "sent", "failed": "failed", "retrying": "retried", "deferred": "deferred",
                   "skipped": "skipped", "fell_back": "fell_back"}


def settle(results: Sequence[Result], now: dt.datetime, claimant: str | None = None,
           step_fallbacks: Mapping[int, str] | None = None) -> list[Result]:
    """Record outcomes, decisions, fallbacks and progress for the sends still ``sending`` (under
    ``claimant``, when given); return the results that applied.

    Idempotent, so it is safe to retry after any failure (a commit whose answer was lost, a
    journal replayed after a restart): the sends still held are locked and picked first, and only
    their results write a decision, a fallback or an enrolment's progress. A send settled
    meanwhile (by an earlier attempt, or re-offered by the reconciler) keeps its first outcome.
    ``step_fallbacks`` (step id -> channel) turns a permanent failure into a fallback send when
    the contact has an address on that channel."""
    if not results:
        return []
    with database.atomic():
        held = _still_held([r.send.id for r in results], claimant)
        results = [r for r in results if r.send.id in held]
        if step_fallbacks:
            results = resolve_fallbacks(results, step_fallbacks)
        if results:
            settle_sends([_row(r, now) for r in results])
            decisions = [_decision(r, now) for r in results if r.outcome in _DECISION_NAMES]
            if decisions:
                insert_many(Decision, decisions).execute()
            fallbacks = [r for r in results if r.fallback_channel and r.outcome in ("fell_back", "failed")]
            if fallbacks:
                create_fallbacks(fallbacks, now)
            done = [r.send.enrolment_id for r in results
                    if r.send.enrolment_id is not None and r.outcome in _FINAL and not r.fallback_channel]
            advance_enrolments(done, now)
    log_outcomes(results)
    return results


def _still_held(send_ids: list[int], claimant: str | None) -> set[int]:
    """The sends among ``send_ids`` still ``sending`` (by ``claimant``), locked until the
    transaction ends on PostgreSQL (SQLite's BEGIN IMMEDIATE already excludes other writers)."""
    query = Send.select(Send.id).where(Send.id.in_(send_ids), Send.status == "sending")
    if claimant is not None:
        query = query.where(Send.claimed_by == claimant)
    if is_postgres():
        query = query.for_update()
    return {r[0] for r in rows(query)}


def resolve_fallbacks(results: list[Result], step_fallbacks: Mapping[int, str]) -> list[Result]:
    """A permanent failure tries the step's fallback channel, when the contact has that address."""
    failing = {r.send.id for r in results if r.outcome == "failed" and r.send.step_id in step_fallbacks
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


def settle_journaled(by_claimant: Mapping[str, Sequence[tuple[Result, str | None]]], now: dt.datetime) -> list[Result]:
    """Write results replayed from a dead worker's journal (engine/journal.py), each group under
    the claimant that wrote it: only sends that worker still holds change. Their subject and body,
    never journaled, come back from the send rows (a fallback send copies them)."""
    applied: list[Result] = []
    for claimant, entries in by_claimant.items():
        ids = [r.send.id for r, _ in entries]
        texts = {r[0]: (r[1], r[2], r[3]) for r in rows(Send.select(Send.id, Send.recipient, Send.subject, Send.body)
                                                         .where(Send.id.in_(ids)))}
        results = [replace(r, send=replace(r.send, recipient=texts[r.send.id][0], subject=texts[r.send.id][1],
                                           body=texts[r.send.id][2]))
                   for r, _ in entries if r.send.id in texts]
        step_fallbacks = {r.send.step_id: fb for r, fb in entries if fb and r.send.step_id is not None}
        applied += settle(results, now, claimant=claimant, step_fallbacks=step_fallbacks)
    return applied


def log_outcomes(results: Iterable[Result]) -> None:
    """One line for each send held back or failed, so whoever watches the log sees why a message
    did not go: INFO for a deferral or a skip, WARNING for a failure. The send's id, channel and
    campaign are fields of the record (JSON fields, or appended to a text line), the reason is in
    the message (masked like any message). A send that went, or will be retried, gets no line."""
    for r in results:
        context = {"send_id": r.send.id, "channel": r.send.channel, "campaign": r.send.campaign_id}
        if r.outcome == "deferred":
            logger.info("send deferred until %s: %s", _utc(r.until), r.reason, extra=context)
        elif r.outcome == "skipped":
            logger.info("send skipped: %s", r.reason, extra=context)
        elif r.outcome == "fell_back":
            logger.info("send not made on its channel: %s", r.reason, extra=context)
        elif r.outcome == "failed":
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


def _decision(r: Result, now: dt.datetime) -> dict[str, Any]:
    reason = r.reason
    if r.outcome in ("failed", "retrying") and r.error:
        reason = r.error[:255]
    if r.outcome == "sent" and r.send.fallback_of_id is not None:
        reason = f"sent as the fallback of send {r.send.fallback_of_id}" + (f"; {r.reason}" if r.reason else "")
    return {"send": r.send.id, "contact": r.send.contact_id, "campaign": r.send.campaign_id,
            "step": r.send.step_id, "channel": r.send.channel, "outcome": _DECISION_NAMES[r.outcome],
            "reason": reason, "until": r.until, "created_at": now}


def create_fallbacks(results: Iterable[Result], now: dt.datetime) -> None:
    """A planned send on the fallback channel for each result; the relay picks them up."""
    rows = []
    for r in results:
        s = r.send
        subject = s.subject
        rows.append({
            "idempotency_key": f"{s.idempotency_key}.{r.fallback_channel}"[:64],
            "channel": r.fallback_channel, "status": "planned", "recipient": r.fallback_recipient,
            "subject": subject, "body": s.body, "contact": s.contact_id, "campaign": s.campaign_id,
            "step": s.step_id, "enrolment": s.enrolment_id, "fallback_of": s.id,
            "due_at": now, "created_at": now,
        })
    insert_many(Send, rows).on_conflict_ignore().execute()


def advance_enrolments(enrolment_ids: Iterable[int | None], now: dt.datetime) -> int:
    """Move waiting enrolments past the step they were waiting on; complete those at the end."""
    ids = sorted({i for i in enrolment_ids if i is not None})
    if not ids:
        return 0
    waiting = rows(Enrolment.select(Enrolment.id, Enrolment.campaign, Enrolment.next_position)
                   .where(Enrolment.id.in_(ids), Enrolment.status == "waiting"))
    if not waiting:
        return 0
    delays = {(c, p): d for c, p, d in rows(CampaignStep.select(CampaignStep.campaign, CampaignStep.position,
                                                               CampaignStep.delay_s)
                                           .where(CampaignStep.campaign.in_(sorted({w[1] for w in waiting}))))}
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for enrolment_id, campaign_id, position in waiting:
        groups[(campaign_id, position + 1)].append(enrolment_id)
    changed = 0
    for (campaign_id, position), members in groups.items():
        delay = delays.get((campaign_id, position))
        if delay is None:
            update = {"status": "completed", "next_position": position, "next_due_at": None, "finished_at": now}
        else:
            update = {"status": "active", "next_position": position,
                      "next_due_at": now + dt.timedelta(seconds=delay)}
        changed += (Enrolment.update(update)
                    .where(Enrolment.id.in_(members), Enrolment.status == "waiting").execute())
    return changed


def failed_result(send: ClaimedSend, reason: str) -> Result:
    return Result(send, "failed", reason=reason, error=reason)


def with_fallback(result: Result, channel: str | None, recipient: str | None) -> Result:
    return replace(result, fallback_channel=channel, fallback_recipient=recipient) if channel else result


def fail_exhausted(send_ids: Sequence[int], now: dt.datetime) -> list[int]:
    """Sends whose message was dead-lettered: failed, logged, and their enrolments moved on."""
    with database.atomic():
        failed = rows(Send.update(status="failed", reason="retries exhausted", finished_at=now)
                      .where(Send.id.in_(list(send_ids)), Send.status.in_(("retrying", "queued")))
                      .returning(Send.id, Send.contact, Send.campaign, Send.step, Send.channel, Send.enrolment,
                                 Send.error))
        if failed:
            insert_many(Decision, [
                {"send": r[0], "contact": r[1], "campaign": r[2], "step": r[3], "channel": r[4],
                 "outcome": "failed", "reason": f"retries exhausted: {r[6] or ''}"[:255], "created_at": now}
                for r in failed]).execute()
            advance_enrolments([r[5] for r in failed], now)
    for r in failed:
        log_failed_send(r[0], r[4], r[2], f"retries exhausted: {r[6] or 'no error recorded'}")
    return [r[0] for r in failed]
