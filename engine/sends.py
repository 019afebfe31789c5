"""A send's life: every change of a send's status, and every row of the decision log.

The statuses and what each outcome does are in ground/send_states.py; this module makes the
transitions, each one set-based (a constant number of statements per batch, whatever its size):

* ``plan`` — new sends (``planned``, or ``failed`` at once on a template error), by the planner;
* ``enqueue`` / ``unqueue`` — ``planned -> queued`` and back, by the outbox relay (which reads
  ``due`` and ``in_flight`` per channel to pace the rate-limited ones);
* ``claim`` — ``queued``/``retrying -> sending`` under a worker's instance id, before any provider call;
* ``settle`` — a claimed send's outcome: sent, failed, skipped, retrying, deferred (back to
  ``planned`` with a later due time) or released (back to ``queued``), with its decision, its
  fallback send and its enrolment's progress, in one transaction;
* ``requeue_lost`` / ``reoffer`` — the reconciler's: a lost message's sends, a dead worker's claims;
* ``fail_exhausted`` — a dead-lettered message's sends.

The checks and the provider calls between claim and settle are engine/checks.py and
actors/delivery.py; what a result leads to beyond the send (fallbacks, enrolments, log lines) is
engine/outcomes.py.
"""

from __future__ import annotations

import datetime as dt
import functools
import operator
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import peewee

from db.bulk import insert_many
from db.database import database, is_postgres, rows
from db.models import Campaign, Decision, Send
from db.queries import settle_sends
from engine import devices, events_out
from engine.campaign_metrics import count_sends
from engine.checks import Candidate, SendChecks
from engine.links import make_unsubscribe_tokens, unsubscribe_url
from engine.outcomes import (
    ClaimedSend,
    Result,
    advance_enrolments,
    fallback_of,
    from_verdict,
    log_failed_send,
    log_outcomes,
    resolve_fallbacks,
    step_fallbacks,
)
from engine.templates import unsubscribe_placeholder
from ground.channels import CHANNELS
from ground.send_states import CLAIMABLE, EFFECTS, Decided, Outcome, SendStatus
from ground.vocabulary import OutEventType

# On a channel queue or in a worker's hands: what the relay's pacing counts against a channel's window.
IN_FLIGHT = (*CLAIMABLE, SendStatus.SENDING)

# -- plan ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewSend:
    """A send the planner writes; ``failure`` set (e.g. "template error") writes it ``failed``."""

    idempotency_key: str
    channel: str
    contact_id: int
    campaign_id: int
    step_id: int
    enrolment_id: int
    recipient: str | None
    subject: str | None = None
    body: str | None = None
    markup: str | None = None
    failure: str | None = None  # why it failed before any worker took it
    error: str | None = None  # the detail (the template's error)


def plan(new: Sequence[NewSend], now: dt.datetime) -> dict[str, int]:
    """Write new sends in one INSERT (a key already taken is skipped); the failed ones get their
    decision and their enrolment moves on. Returns the new sends' ids by idempotency key."""
    if not new:
        return {}
    # Failed and planned rows go in one INSERT, so both carry every column (see db/bulk.py).
    ids = {key: send_id for send_id, key in rows(insert_many(Send, [{
        "idempotency_key": n.idempotency_key, "channel": n.channel, "contact": n.contact_id,
        "campaign": n.campaign_id, "step": n.step_id, "enrolment": n.enrolment_id, "recipient": n.recipient,
        "due_at": now, "created_at": now,
        "status": SendStatus.FAILED if n.failure else SendStatus.PLANNED,
        "subject": n.subject, "body": n.body, "markup": n.markup,
        "error": (n.error or "")[:2000] if n.failure else None,
        "reason": n.failure, "finished_at": now if n.failure else None,
    } for n in new]).on_conflict_ignore().returning(Send.id, Send.idempotency_key))}
    failed = [n for n in new if n.failure]
    if failed:
        _decide([_decision_row(ids.get(n.idempotency_key), n.contact_id, n.campaign_id, n.step_id, n.channel,
                               Decided.FAILED, f"{n.failure}: {n.error}", now) for n in failed])
        advance_enrolments([n.enrolment_id for n in failed], now)
        _tell_failed([(n.idempotency_key, ids.get(n.idempotency_key), n.channel, n.contact_id, n.campaign_id,
                       n.step_id, n.failure) for n in failed], now)
        for n in failed:
            log_failed_send(ids.get(n.idempotency_key), n.channel, n.campaign_id, f"{n.failure}: {n.error}")
    return ids


def _plan_fallbacks(results: Sequence[Result], now: dt.datetime) -> None:
    """A planned send on the fallback channel for each result; the relay picks them up."""
    insert_many(Send, [{
        "idempotency_key": f"{r.send.idempotency_key}.{r.fallback_channel}"[:64],
        "channel": r.fallback_channel, "status": SendStatus.PLANNED, "recipient": r.fallback_recipient,
        "subject": r.send.subject, "body": r.send.body, "contact": r.send.contact_id,
        "campaign": r.send.campaign_id, "step": r.send.step_id, "enrolment": r.send.enrolment_id,
        "fallback_of": r.send.id, "due_at": now, "created_at": now,
    } for r in results]).on_conflict_ignore().execute()


# -- relay -----------------------------------------------------------------------------------------


def due(now: dt.datetime, limits: Mapping[str, int]) -> list[tuple[int, str]]:
    """(id, channel) of the planned sends due by ``now``, oldest first on each channel, at most
    ``limits[channel]`` of each: one statement, a UNION ALL of one LIMITed index range per channel
    on ``send(status, channel, due_at)``, so its cost follows what is taken, not the backlog."""
    parts = []
    for index, (channel, limit) in enumerate(sorted((c, n) for c, n in limits.items() if n > 0)):
        # Ordered by due_at alone, so each range is read in index order and stops at its LIMIT
        # (a tie-break on id makes PostgreSQL sort the channel's whole due backlog first).
        ranged = (Send.select(Send.id, Send.channel)
                  .where(Send.status == SendStatus.PLANNED, Send.channel == channel, Send.due_at <= now)
                  .order_by(Send.due_at).limit(limit)).alias(f"due_{index}")
        parts.append(Send.select(ranged.c.id, ranged.c.channel).from_(ranged))
    if not parts:
        return []
    return [(i, c) for i, c in rows(functools.reduce(operator.add, parts))]  # + is UNION ALL


def in_flight(channels: Collection[str]) -> dict[str, Counter[SendStatus]]:
    """Sends on their way per channel, by status (``queued``, ``retrying``, ``sending``), one
    grouped statement on ``send(status, channel, due_at)``; a channel with none is absent."""
    if not channels:
        return {}
    found: dict[str, Counter[SendStatus]] = {}
    for channel, status, count in rows(Send.select(Send.channel, Send.status, peewee.fn.COUNT(Send.id))
                                       .where(Send.status.in_(IN_FLIGHT), Send.channel.in_(sorted(channels)))
                                       .group_by(Send.channel, Send.status)):
        found.setdefault(channel, Counter())[SendStatus(status)] = int(count)
    return found


def enqueue(send_ids: Sequence[int], now: dt.datetime) -> list[int]:
    """``planned -> queued``: the ids this process moved (and so must publish)."""
    return [r[0] for r in rows(Send.update(status=SendStatus.QUEUED, queued_at=now)
                               .where(Send.id.in_(list(send_ids)), Send.status == SendStatus.PLANNED)
                               .returning(Send.id))]


def unqueue(send_ids: Sequence[int]) -> int:
    """``queued -> planned``: their publish failed; the next tick tries again."""
    return int(Send.update(status=SendStatus.PLANNED, queued_at=None)
               .where(Send.id.in_(list(send_ids)), Send.status == SendStatus.QUEUED).execute())


# -- claim -----------------------------------------------------------------------------------------

# What a claim reads back, by ClaimedSend field (the channel is the claimer's).
_CLAIMED = {"id": Send.id, "idempotency_key": Send.idempotency_key, "recipient": Send.recipient,
            "subject": Send.subject, "body": Send.body, "markup": Send.markup, "contact_id": Send.contact, "campaign_id": Send.campaign,
            "step_id": Send.step, "enrolment_id": Send.enrolment, "fallback_of_id": Send.fallback_of,
            "attempts": Send.attempts, "deferrals": Send.deferrals, "due_at": Send.due_at,
            "queued_at": Send.queued_at, "claimed_at": Send.claimed_at}


def claim(channel: str, send_ids: Sequence[int], instance: str, now: dt.datetime,
          in_hand: Collection[int] = ()) -> list[ClaimedSend]:
    """``queued``/``retrying -> sending`` under ``instance``, one attempt spent, in one UPDATE.
    Also takes back ``instance``'s own ``sending`` claims that no thread of it holds (``in_hand``
    lists those it holds): a claim whose commit went through while its answer was lost."""
    orphaned = (Send.status == SendStatus.SENDING) & (Send.claimed_by == instance)
    if in_hand:
        orphaned &= Send.id.not_in(list(in_hand))
    claimed = rows(Send.update(status=SendStatus.SENDING, claimed_at=now, claimed_by=instance,
                               attempts=Send.attempts + 1)
                   .where(Send.id.in_(list(send_ids)), Send.status.in_(CLAIMABLE) | orphaned, Send.channel == channel)
                   .returning(*_CLAIMED.values()))
    out = []
    for r in claimed:
        fields = dict(zip(_CLAIMED, r, strict=True))
        fields["due_at"] = _as_dt(fields["due_at"]) or now
        fields["queued_at"], fields["claimed_at"] = _as_dt(fields["queued_at"]), _as_dt(fields["claimed_at"])
        out.append(ClaimedSend(channel=channel, **fields))
    return out


@dataclass(frozen=True)
class Prepared:
    """A claimed batch after its checks: what to send (with each message's extra headers), the
    results of the sends held back (already settled), the step fallbacks (step id -> channel)."""

    to_send: list[ClaimedSend]
    headers: dict[int, dict[str, str]]
    held: list[Result]
    fallbacks: dict[int, str]
    devices: dict[int, dict[str, tuple[str, ...]]] = field(default_factory=dict)  # a push send's, by send id


def prepare(claimed: Sequence[ClaimedSend], checks: SendChecks, public_url: str, now: dt.datetime,
            claimant: str) -> Prepared:
    """Check a claimed batch (a constant number of queries): the sends held back are settled here,
    the others come back with their headers. Safe to run again after a failure (settle is
    idempotent)."""
    fallbacks = step_fallbacks(claimed)
    verdicts = checks.evaluate([Candidate(s.id, s.channel, s.contact_id, s.campaign_id, s.recipient,
                                          fallback_of(s, fallbacks)) for s in claimed], now)
    held = [from_verdict(s, verdicts[s.id]) for s in claimed if verdicts[s.id].action != "send"]
    to_send = [s for s in claimed if verdicts[s.id].action == "send"]
    to_send, headers = _unsubscribe_links(to_send, public_url)
    to_send = events_out.with_contacts(to_send)
    # a push goes to the contact's devices as they are now (one removed since planning is not tried)
    pushed = [s for s in to_send if CHANNELS[s.channel].devices and s.contact_id is not None]
    by_contact = devices.devices_of(int(s.contact_id or 0) for s in pushed)
    return Prepared(to_send, headers, settle(held, now, claimant=claimant), fallbacks,
                    {s.id: by_contact.get(int(s.contact_id or 0), {}) for s in pushed})


def _unsubscribe_links(to_send: Sequence[ClaimedSend], public_url: str) -> tuple[list[ClaimedSend],
                                                                                 dict[int, dict[str, str]]]:
    """One unsubscribe token per campaign send that needs one: the List-Unsubscribe and RFC 8058
    one-click headers of a campaign email, and the ``{{ unsubscribe_url }}`` its text or HTML
    holds as a placeholder since it was planned (engine/templates.py). Returns the sends with
    their links in place, and the headers by send id."""
    placeholder = unsubscribe_placeholder(public_url)
    needing = {s.id for s in to_send if s.contact_id is not None and s.campaign_id is not None and (
        CHANNELS[s.channel].list_unsubscribe or placeholder in (s.body or "") or placeholder in (s.markup or ""))}
    if not needing:
        return list(to_send), {}
    items = [s for s in to_send if s.id in needing]
    tokens = dict(zip((s.id for s in items),
                      make_unsubscribe_tokens([(int(s.contact_id or 0), s.channel, s.id) for s in items]), strict=True))
    headers = {s.id: {"List-Unsubscribe": f"<{unsubscribe_url(public_url, tokens[s.id])}>",
                      "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
               for s in items if CHANNELS[s.channel].list_unsubscribe}
    linked = [s if s.id not in tokens else replace(
        s, body=s.body and s.body.replace(placeholder, unsubscribe_url(public_url, tokens[s.id])),
        markup=s.markup and s.markup.replace(placeholder, unsubscribe_url(public_url, tokens[s.id])))
        for s in to_send]
    return linked, headers


# -- settle ----------------------------------------------------------------------------------------


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
            settle_sends([_settled_row(r, now) for r in results])
            _decide([_decision(r, now) for r in results if EFFECTS[r.outcome].decision is not None])
            fallbacks = [r for r in results if r.fallback_channel and r.outcome in (Outcome.FELL_BACK, Outcome.FAILED)]
            if fallbacks:
                _plan_fallbacks(fallbacks, now)
            advance_enrolments([r.send.enrolment_id for r in results
                                if EFFECTS[r.outcome].step_done and not r.fallback_channel], now)
            _emit_outcomes(results, now)
            gone = [(r.send.contact_id, r.send.id, r.send.channel, r.invalid_devices) for r in results
                    if r.invalid_devices and r.send.contact_id is not None]
            if gone:
                devices.remove(gone, now)
    log_outcomes(results)
    return results


def _emit_outcomes(results: Sequence[Result], now: dt.datetime) -> None:
    """``send.sent`` and ``send.failed`` for the destinations that want them (engine/events_out.py);
    event sends themselves report nothing."""
    told = {Outcome.SENT: OutEventType.SEND_SENT, Outcome.FAILED: OutEventType.SEND_FAILED}
    reported = [r for r in results if r.outcome in told and events_out.wanted(told[r.outcome])
                and not events_out.is_event_send(r.send.idempotency_key)]
    if not reported:
        return
    slugs = events_out.campaign_slugs(r.send.campaign_id for r in reported)
    events_out.emit(OutEventType.SEND_SENT, [(f"s{r.send.id}", {
        "send_id": r.send.id, "channel": r.send.channel, "contact_id": r.send.contact_id,
        "campaign": slugs.get(r.send.campaign_id or 0), "step_id": r.send.step_id,
        "provider": r.provider, "provider_message_id": r.provider_message_id,
    }) for r in reported if r.outcome == Outcome.SENT], now)
    _tell_failed([(r.send.idempotency_key, r.send.id, r.send.channel, r.send.contact_id, r.send.campaign_id,
                   r.send.step_id, r.reason) for r in reported if r.outcome == Outcome.FAILED], now)


def _tell_failed(failed: Sequence[tuple[str, int | None, str, int | None, int | None, int | None, str | None]],
                 now: dt.datetime) -> None:
    """``send.failed`` for (key, id, channel, contact, campaign, step, reason) of sends failed for
    good, whichever way (a provider's refusal, a template error, retries exhausted); with the
    failure's reason, not the provider's error text (it may quote the address)."""
    failed = [f for f in failed if f[1] is not None and not events_out.is_event_send(f[0])]
    if not failed or not events_out.wanted(OutEventType.SEND_FAILED):
        return
    slugs = events_out.campaign_slugs(f[4] for f in failed)
    events_out.emit(OutEventType.SEND_FAILED, [(f"s{send_id}", {
        "send_id": send_id, "channel": channel, "contact_id": contact_id, "campaign": slugs.get(campaign_id or 0),
        "step_id": step_id, "reason": reason,
    }) for _, send_id, channel, contact_id, campaign_id, step_id, reason in failed], now)


def release(claimed: Sequence[ClaimedSend], now: dt.datetime, claimant: str) -> list[Result]:
    """``sending -> queued``, the attempt not spent: claimed, never handed to a provider."""
    return settle([Result(s, Outcome.RELEASED) for s in claimed], now, claimant=claimant)


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
        fallbacks = {r.send.step_id: fb for r, fb in entries if fb and r.send.step_id is not None}
        applied += settle(results, now, claimant=claimant, step_fallbacks=fallbacks)
    return applied


def _still_held(send_ids: list[int], claimant: str | None) -> set[int]:
    """The sends among ``send_ids`` still ``sending`` (by ``claimant``), locked until the
    transaction ends on PostgreSQL (SQLite's BEGIN IMMEDIATE already excludes other writers)."""
    query = Send.select(Send.id).where(Send.id.in_(send_ids), Send.status == SendStatus.SENDING)
    if claimant is not None:
        query = query.where(Send.claimed_by == claimant)
    if is_postgres():
        query = query.for_update()
    return {r[0] for r in rows(query)}


def _settled_row(r: Result, now: dt.datetime) -> tuple[Any, ...]:
    """(id, *db.queries.SETTLE_COLUMNS): status, provider, provider_message_id, error, reason,
    finished_at, due_at, attempts, deferrals, claimed_at, queued_at."""
    effect = EFFECTS.get(r.outcome)
    if effect is None:  # RATE_LIMITED is settled as DEFERRED before it comes here
        raise ValueError(f"no send status for outcome {r.outcome!r}")
    s, status = r.send, effect.status
    if r.outcome == Outcome.SENT:
        return (s.id, status, r.provider, r.provider_message_id, None, None, r.finished_at or now, s.due_at,
                s.attempts, s.deferrals, s.claimed_at, s.queued_at)
    if r.outcome == Outcome.FAILED:
        return (s.id, status, r.provider, None, r.error, r.reason or "provider refused", now, s.due_at,
                s.attempts, s.deferrals, s.claimed_at, s.queued_at)
    if r.outcome == Outcome.RETRYING:
        return (s.id, status, r.provider, None, r.error, None, None, s.due_at,
                s.attempts, s.deferrals, s.claimed_at, now)
    if r.outcome == Outcome.RELEASED:  # handed back unsent: the claim did not count
        return (s.id, status, None, None, None, None, None, s.due_at,
                s.attempts - 1, s.deferrals, None, s.queued_at)
    if r.outcome == Outcome.DEFERRED:  # back to the outbox with a new due time; no attempt spent
        return (s.id, status, r.provider, None, r.error, r.reason, None, r.until,
                s.attempts - 1, s.deferrals + 1, None, None)
    # the rest of EFFECTS: SKIPPED and FELL_BACK, held back by the checks
    assert r.outcome in (Outcome.SKIPPED, Outcome.FELL_BACK), r.outcome
    return (s.id, status, None, None, None, r.reason, now, s.due_at,
            s.attempts - 1, s.deferrals, s.claimed_at, s.queued_at)


def _decision(r: Result, now: dt.datetime) -> dict[str, Any]:
    decided = EFFECTS[r.outcome].decision
    assert decided is not None
    reason = r.reason
    if r.outcome in (Outcome.FAILED, Outcome.RETRYING) and r.error:
        reason = r.error
    if r.outcome == Outcome.SENT and r.send.fallback_of_id is not None:
        reason = f"sent as the fallback of send {r.send.fallback_of_id}" + (f"; {r.reason}" if r.reason else "")
    return _decision_row(r.send.id, r.send.contact_id, r.send.campaign_id, r.send.step_id, r.send.channel,
                         decided, reason, now, until=r.until)


# -- reconcile, dead letters -------------------------------------------------------------------------


def requeue_lost(queued_before: dt.datetime) -> int:
    """``queued``/``retrying -> planned`` for sends queued before ``queued_before``: their message
    was lost; the relay enqueues them again (the claim makes the old message harmless)."""
    return int(Send.update(status=SendStatus.PLANNED, queued_at=None)
               .where(Send.status.in_(CLAIMABLE), Send.queued_at < queued_before)
               .execute())


def reoffer(dead_claimants: Sequence[str], claimed_before: dt.datetime, now: dt.datetime) -> int:
    """``sending -> planned`` for the claims of dead workers (and claims without a claimant made
    before ``claimed_before``), each with a decision: whether the provider got the call is unknown,
    so the send goes again, with the same idempotency key."""
    abandoned = Send.claimed_by.is_null() & (Send.claimed_at < claimed_before)
    if dead_claimants:
        abandoned = abandoned | Send.claimed_by.in_(list(dead_claimants))
    reclaimed = rows(Send.update(status=SendStatus.PLANNED, claimed_at=None, queued_at=None)
                     .where(Send.status == SendStatus.SENDING, abandoned)
                     .returning(Send.id, Send.contact, Send.campaign, Send.step, Send.channel))
    _decide([_decision_row(i, contact, campaign, step, channel, Decided.REOFFERED,
                           "its worker stopped mid-send; offered again (at least once)", now)
             for i, contact, campaign, step, channel in reclaimed])
    return len(reclaimed)


def fail_exhausted(send_ids: Sequence[int], now: dt.datetime) -> list[int]:
    """``queued``/``retrying -> failed``: their message was dead-lettered. Logged, decided, and
    their enrolments moved on; returns the sends failed."""
    with database.atomic():
        failed = rows(Send.update(status=SendStatus.FAILED, reason="retries exhausted", finished_at=now)
                      .where(Send.id.in_(list(send_ids)), Send.status.in_(CLAIMABLE))
                      .returning(Send.id, Send.contact, Send.campaign, Send.step, Send.channel, Send.enrolment,
                                 Send.error, Send.idempotency_key))
        _decide([_decision_row(r[0], r[1], r[2], r[3], r[4], Decided.FAILED, f"retries exhausted: {r[6] or ''}", now)
                 for r in failed])
        advance_enrolments([r[5] for r in failed], now)
        _tell_failed([(r[7], r[0], r[4], r[1], r[2], r[3], "retries exhausted") for r in failed], now)
    count_sends("failed", [r[3] for r in failed])
    for r in failed:
        log_failed_send(r[0], r[4], r[2], f"retries exhausted: {r[6] or 'no error recorded'}")
    return [r[0] for r in failed]


TEST_KEY_PREFIX = "test-"  # the idempotency key of a test send: it has no contact, campaign or step


def record_test_send(idempotency_key: str, channel: str, provider: str | None, recipient: str | None,
                     provider_message_id: str | None, error: str | None, note: str, now: dt.datetime) -> int:
    """The row of a test send, written once its provider answered: ``sent`` or ``failed``, with no
    contact, campaign or step (so no cap counts it and analytics never see it), and no text (it
    may have been rendered for a real contact, whose erasure could not find it: the operator saw
    it in the answer); ``note`` says which step it tried (its ``reason``)."""
    return int(Send.insert(idempotency_key=idempotency_key, channel=channel, provider=provider, recipient=recipient,
                           status=SendStatus.FAILED if error else SendStatus.SENT,
                           provider_message_id=provider_message_id, error=error, reason=note[:255], attempts=1,
                           due_at=now, created_at=now, finished_at=now).execute())


class NotRequeued(ValueError):
    """Why a send is not put back in the outbox."""


def requeue_failed(send_id: int, now: dt.datetime) -> Send:
    """``failed -> planned`` for one send an operator re-queues (a dead letter whose cause is
    mended): due now, its attempts and error cleared, with a decision. It is detached from its
    enrolment, which moved on when it failed: its outcome must not move the enrolment again.
    Raises ``NotRequeued`` for a send that is not failed (any more), whose failure already planned
    a fallback on another channel (re-queueing it would deliver the message twice), or whose
    campaign is archived."""
    send = Send.get_by_id(send_id)
    if send.status != SendStatus.FAILED:
        raise NotRequeued(f"send {send_id} is {send.status}; only a failed send is re-queued")
    if Send.select().where(Send.fallback_of == send_id).exists():
        raise NotRequeued(f"send {send_id} fell back to another channel: its fallback carries the message")
    if send.campaign_id is not None and Campaign.get_by_id(send.campaign_id).archived_at is not None:
        raise NotRequeued(f"send {send_id} belongs to an archived campaign")
    with database.atomic():
        requeued = rows(Send.update(status=SendStatus.PLANNED, due_at=now, attempts=0, deferrals=0, error=None,
                                    reason=None, finished_at=None, queued_at=None, claimed_at=None,
                                    claimed_by=None, enrolment=None)
                        .where((Send.id == send_id) & (Send.status == SendStatus.FAILED))
                        .returning(Send.id, Send.contact, Send.campaign, Send.step, Send.channel))
        _decide([_decision_row(i, contact, campaign, step, channel, Decided.REQUEUED, "re-queued by an operator", now)
                 for i, contact, campaign, step, channel in requeued])
    if not requeued:  # settled by someone else meanwhile
        raise NotRequeued(f"send {send_id} is no longer failed")
    return Send.get_by_id(send_id)


def skip_planned(campaign_id: int, reason: str, now: dt.datetime) -> int:
    """``planned -> skipped`` for a campaign's sends still in the outbox (its archive), each with a
    decision; those already on a channel queue go out."""
    skipped = rows(Send.update(status=SendStatus.SKIPPED, reason=reason, finished_at=now)
                   .where((Send.campaign == campaign_id) & (Send.status == SendStatus.PLANNED))
                   .returning(Send.id, Send.contact, Send.campaign, Send.step, Send.channel))
    _decide([_decision_row(i, contact, campaign, step, channel, Decided.SKIPPED, reason, now)
             for i, contact, campaign, step, channel in skipped])
    return len(skipped)


# -- the decision log ----------------------------------------------------------------------------------


def _decision_row(send_id: int | None, contact_id: int | None, campaign_id: int | None, step_id: int | None,
                  channel: str, decided: Decided, reason: str | None, now: dt.datetime,
                  until: dt.datetime | None = None) -> dict[str, Any]:
    return {"send": send_id, "contact": contact_id, "campaign": campaign_id, "step": step_id, "channel": channel,
            "outcome": decided, "reason": reason[:255] if reason else reason, "until": until, "created_at": now}


def _decide(decisions: list[dict[str, Any]]) -> None:
    """Write decision-log rows, one INSERT (all rows carry every column, see db/bulk.py)."""
    if decisions:
        insert_many(Decision, decisions).execute()


def _as_dt(value: object) -> dt.datetime | None:
    """SQLite's RETURNING hands datetimes back as text."""
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))
