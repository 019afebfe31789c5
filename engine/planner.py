"""The scheduler's planning step: due enrolment steps become planned sends in the outbox.

One tick takes due enrolments in batches with the indexed query ``status = 'active' AND
next_due_at <= now ORDER BY next_due_at`` (index ``enrolment(status, next_due_at)``: the cost
follows the due work, not the number of contacts), and in ONE transaction per batch: claims them
(``active -> waiting``, so a second daemon's tick cannot take them too), renders each step for its
contact, writes the sends (``planned``) and their tracked links. A crash anywhere in the batch
rolls all of it back. The relay then enqueues the planned sends; the enrolment moves on when its
send is done (engine/outcomes.py).

Idempotency keys are ``e<enrolment>.<position>``: one send per enrolment step, ever.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from db.bulk import insert_many
from db.database import database, db_session, is_postgres, rows, sql_rows
from db.models import CampaignStep, Contact, Decision, Enrolment, Send
from engine.links import save_links
from engine.outcomes import advance_enrolments, log_failed_send
from engine.templates import Rendered, RenderJob, TemplateError, render_batch
from ground.channels import CHANNELS
from ground.settings import Settings

BATCH = 500

# PostgreSQL: SKIP LOCKED lets two daemons' ticks take disjoint batches instead of queueing.
_PG_CLAIM = """
UPDATE enrolment SET status = 'waiting'
WHERE id IN (SELECT id FROM enrolment WHERE status = 'active' AND next_due_at <= %s
             ORDER BY next_due_at LIMIT %s FOR UPDATE SKIP LOCKED)
  AND status = 'active'
RETURNING id, contact_id, campaign_id, next_position
"""
_SQLITE_CLAIM = """
UPDATE enrolment SET status = 'waiting'
WHERE id IN (SELECT id FROM enrolment WHERE status = 'active' AND next_due_at <= ?
             ORDER BY next_due_at LIMIT ?)
  AND status = 'active'
RETURNING id, contact_id, campaign_id, next_position
"""
DUE_QUERY = ("SELECT id FROM enrolment WHERE status = 'active' AND next_due_at <= {p} "
             "ORDER BY next_due_at LIMIT {p}")


@dataclass
class PlanReport:
    planned: int = 0
    failed: int = 0  # template errors: the send is failed, the enrolment moves on
    completed: int = 0  # enrolments past their campaign's last step


def contact_fields(contact: Contact) -> dict[str, Any]:
    return {"id": contact.id, "external_id": contact.external_id, "email": contact.email, "phone": contact.phone,
            "name": contact.name, "timezone": contact.timezone, "attributes": contact.attributes or {}}


def plan_due_steps(settings: Settings, now: dt.datetime, limit: int = 10_000) -> PlanReport:
    """Plan up to ``limit`` due enrolment steps, in batches of BATCH, one transaction each."""
    report = PlanReport()
    with db_session():
        while report.planned + report.failed + report.completed < limit:
            size = min(BATCH, limit - report.planned - report.failed - report.completed)
            with database.atomic():
                claimed = _claim(now, size)
                if not claimed:
                    break
                _plan_batch(settings, claimed, now, report)
            if len(claimed) < size:
                break
    return report


def _claim(now: dt.datetime, size: int) -> list[tuple[Any, ...]]:
    sql = _PG_CLAIM if is_postgres() else _SQLITE_CLAIM
    value: Any = now if is_postgres() else str(now)
    return sql_rows(sql, (value, size))


def _plan_batch(settings: Settings, claimed: Sequence[tuple[Any, ...]], now: dt.datetime,
                report: PlanReport) -> None:
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
        (Enrolment.update(status="completed", next_due_at=None, finished_at=now)
         .where(Enrolment.id.in_(finished)).execute())
        report.completed += len(finished)
    if not work:
        return

    rendered = render_batch([RenderJob(contact=contact_fields(contact), subject=step.subject, body=step.body,
                                       channel=step.channel) for _, contact, step in work], settings.public_url)
    send_rows = []
    for (enrolment_id, contact, step), output in zip(work, rendered, strict=True):
        # Failed and planned rows go in one INSERT, so both carry every column (see db/bulk.py).
        failed = isinstance(output, TemplateError)
        send_rows.append({
            "idempotency_key": f"e{enrolment_id}.{step.position}", "channel": step.channel,
            "contact": contact.id, "campaign": step.campaign_id, "step": step.id, "enrolment": enrolment_id,
            "recipient": getattr(contact, CHANNELS[step.channel].address_field), "due_at": now, "created_at": now,
            "status": "failed" if failed else "planned",
            "subject": None if isinstance(output, TemplateError) else output.subject,
            "body": None if isinstance(output, TemplateError) else output.body,
            "error": str(output)[:2000] if failed else None,
            "reason": "template error" if failed else None,
            "finished_at": now if failed else None,
        })
    ids = {key: send_id for send_id, key in rows(
        insert_many(Send, send_rows).on_conflict_ignore().returning(Send.id, Send.idempotency_key))}

    links: list[tuple[str, str, int, int | None, int, int]] = []
    failures = []
    for (enrolment_id, contact, step), output, row in zip(work, rendered, send_rows, strict=True):
        send_id = ids.get(row["idempotency_key"])
        if isinstance(output, TemplateError):
            failures.append((send_id, enrolment_id, contact, step, str(output)))
            continue
        assert isinstance(output, Rendered)
        links.extend((token, url, contact.id, send_id, step.campaign_id, step.id) for token, url in output.links)
    if links:
        save_links(links)
    if failures:
        insert_many(Decision, [{"send": send_id, "contact": contact.id, "campaign": step.campaign_id,
                                "step": step.id, "channel": step.channel, "outcome": "failed",
                                "reason": f"template error: {error}"[:255], "created_at": now}
                               for send_id, _, contact, step, error in failures]).execute()
        advance_enrolments([f[1] for f in failures], now)
        for send_id, _, _, step, error in failures:
            log_failed_send(send_id, step.channel, step.campaign_id, f"template error: {error}")
    report.failed += len(failures)
    report.planned += len(work) - len(failures)
