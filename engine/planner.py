"""The scheduler's planning step: due enrolment steps become planned sends in the outbox.

One tick takes due enrolments in batches with the indexed query ``status = 'active' AND
next_due_at <= now ORDER BY next_due_at`` (``due_enrolments``) (index ``enrolment(status, next_due_at)``: the cost
follows the due work, not the number of contacts), and in ONE transaction per batch: claims them
(``active -> waiting``, so a second daemon's tick cannot take them too), renders each step for its
contact, writes the sends (``planned``) and their tracked links. A crash anywhere in the batch
rolls all of it back. The relay then enqueues the planned sends; the enrolment moves on when its
send is done (engine/sends.py settles it, engine/outcomes.py moves the enrolment on).

Idempotency keys are ``e<enrolment>.<position>``: one send per enrolment step, ever.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import peewee

from db.database import database, db_session, is_postgres, rows
from db.models import CampaignStep, Contact, Enrolment
from engine import sends, voice
from engine.campaign_metrics import count_sends
from engine.links import save_links
from engine.templates import Rendered, RenderJob, TemplateError, render_batch
from ground.channels import CHANNELS
from ground.send_states import EnrolmentStatus
from ground.settings import Settings

BATCH = 500


def due_enrolments(now: dt.datetime, size: int, contact_ids: Sequence[int] | None = None) -> peewee.ModelSelect[Enrolment]:
    """The due query: up to ``size`` active enrolments due by ``now``, oldest first, on the index
    ``enrolment(status, next_due_at)`` (of ``contact_ids`` only, when given). On PostgreSQL the
    rows are locked, skipping locked ones, so two daemons' ticks take disjoint batches instead of
    queueing."""
    query = (Enrolment.select(Enrolment.id)
             .where(Enrolment.status == EnrolmentStatus.ACTIVE, Enrolment.next_due_at <= now)
             .order_by(Enrolment.next_due_at).limit(size))
    if contact_ids is not None:
        query = query.where(Enrolment.contact.in_(sorted(set(contact_ids))))
    return query.for_update(skip_locked=True) if is_postgres() else query


def claim_due(now: dt.datetime, size: int, contact_ids: Sequence[int] | None = None) -> peewee.ModelUpdate:
    """The statement a planning batch starts with: the due enrolments ``active -> waiting`` (so
    another daemon's tick cannot take them too), returning (id, contact, campaign, position)."""
    # A materialised CTE, not ``id IN (subquery)``: PostgreSQL may run a LIMIT ... FOR UPDATE SKIP
    # LOCKED subquery again for each row it updates, each run skipping the rows the previous ones
    # locked, so the batch grew to the whole due backlog (1,200 claimed for a batch of 500).
    due = due_enrolments(now, size, contact_ids).cte("due", materialized=True)
    return (Enrolment.update(status=EnrolmentStatus.WAITING)
            .with_cte(due)
            .where(Enrolment.id.in_(due.select_from(due.c.id)), Enrolment.status == EnrolmentStatus.ACTIVE)
            .returning(Enrolment.id, Enrolment.contact, Enrolment.campaign, Enrolment.next_position))


@dataclass
class PlanReport:
    planned: int = 0
    failed: int = 0  # template errors: the send is failed, the enrolment moves on
    completed: int = 0  # enrolments past their campaign's last step


def contact_fields(contact: Contact) -> dict[str, Any]:
    return {"id": contact.id, "external_id": contact.external_id, "email": contact.email, "phone": contact.phone,
            "name": contact.name, "timezone": contact.timezone, "attributes": contact.attributes or {}}


def plan_due_steps(settings: Settings, now: dt.datetime, limit: int = 10_000,
                   after_batch: Callable[[], object] = lambda: None) -> PlanReport:
    """Plan up to ``limit`` due enrolment steps, in batches of BATCH, one transaction each;
    ``after_batch()`` runs after each committed batch (the scheduler relays there, so the first
    sends go out while the rest is planned, and a paced channel is topped up meanwhile)."""
    with db_session():
        return _plan(settings, now, limit, None, after_batch)


def plan_contacts(settings: Settings, contact_ids: Sequence[int], now: dt.datetime) -> PlanReport:
    """Plan the due steps of these contacts' enrolments now, without waiting for the scheduler's
    tick (call it in a ``db_session``, out of any transaction): the event processor calls it for
    the contacts of a batch it just committed, so a lead enrolled in a campaign whose first step
    has no delay has its send planned at once. The tick's claim (a conditional UPDATE) and
    planning, restricted to these contacts: a step is planned once, whichever of the two, or of two
    daemons, comes first; what this misses (a crash, an error) stays due for the tick."""
    if not contact_ids:
        return PlanReport()
    return _plan(settings, now, 10_000, contact_ids)


def _plan(settings: Settings, now: dt.datetime, limit: int, contact_ids: Sequence[int] | None,
          after_batch: Callable[[], object] = lambda: None) -> PlanReport:
    report = PlanReport()
    while report.planned + report.failed + report.completed < limit:
        size = min(BATCH, limit - report.planned - report.failed - report.completed)
        with database.atomic():
            claimed = rows(claim_due(now, size, contact_ids))
            if not claimed:
                break
            new = _plan_batch(settings, claimed, now, report)
        # committed: the campaigns' funnels count them
        count_sends("planned", [n.step_id for n in new])
        count_sends("failed", [n.step_id for n in new if n.failure])
        after_batch()
        if len(claimed) < size:
            break
    return report


def _plan_batch(settings: Settings, claimed: Sequence[tuple[Any, ...]], now: dt.datetime,
                report: PlanReport) -> list[sends.NewSend]:
    """Plan the claimed steps; returns the sends made (a template error's failed at once)."""
    campaign_ids = sorted({c[2] for c in claimed})
    steps = {(s.campaign_id, s.position): s for s in CampaignStep.select()
             .where(CampaignStep.campaign.in_(campaign_ids))}
    contacts = {c.id: c for c in Contact.select().where(Contact.id.in_(sorted({c[1] for c in claimed})))}

    finished: list[int] = []
    work: list[tuple[int, Contact, CampaignStep]] = []
    for enrolment_id, contact_id, campaign_id, position in claimed:
        step = steps.get((campaign_id, position))
        contact = contacts.get(contact_id)
        if step is None or contact is None:  # the campaign got shorter, or the contact is gone
            finished.append(enrolment_id)
        else:
            work.append((enrolment_id, contact, step))
    if finished:
        (Enrolment.update(status=EnrolmentStatus.COMPLETED, next_due_at=None, finished_at=now)
         .where(Enrolment.id.in_(finished)).execute())
        report.completed += len(finished)
    if not work:
        return []

    rendered = render_batch([RenderJob(contact=contact_fields(contact), subject=step.subject, body=step.body,
                                       channel=step.channel, html=step.html, layout=step.layout_html)
                             for _, contact, step in work], settings.public_url)
    new = [_new_send(settings, enrolment_id, contact, step, output)
           for (enrolment_id, contact, step), output in zip(work, rendered, strict=True)]
    ids = sends.plan(new, now)

    links: list[tuple[str, str, int, int | None, int, int]] = []
    for (_, contact, step), output, n in zip(work, rendered, new, strict=True):
        if isinstance(output, Rendered):
            links.extend((token, url, contact.id, ids.get(n.idempotency_key), step.campaign_id, step.id)
                         for token, url in output.links)
    if links:
        save_links(links)
    failed = sum(1 for n in new if n.failure)
    report.failed += failed
    report.planned += len(new) - failed
    return new


def _new_send(settings: Settings, enrolment_id: int, contact: Contact, step: CampaignStep,
              output: Rendered | TemplateError) -> sends.NewSend:
    common: dict[str, Any] = {
        "idempotency_key": f"e{enrolment_id}.{step.position}", "channel": step.channel, "contact_id": contact.id,
        "campaign_id": step.campaign_id, "step_id": step.id, "enrolment_id": enrolment_id,
        "recipient": getattr(contact, CHANNELS[step.channel].address_field)}
    markup = output.html if not isinstance(output, TemplateError) else None
    if not isinstance(output, TemplateError) and CHANNELS[step.channel].markup == "twiml":
        try:
            markup = voice.twiml(output.body, step.voice or {}, settings)
        except TemplateError as exc:
            output = exc
    if isinstance(output, TemplateError):
        return sends.NewSend(**common, failure="template error", error=str(output))
    return sends.NewSend(**common, subject=output.subject, body=output.body, markup=markup)
