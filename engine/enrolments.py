"""Enrolling contacts in campaigns and taking them out, set-based.

A contact is enrolled at most once per campaign, ever: the unique (contact, campaign) pair and
``ON CONFLICT DO NOTHING`` make enrolment idempotent, so a repeated trigger event, a retried
import or a redelivered message never restarts a sequence, not even one already completed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import peewee

from db.database import database
from db.models import Campaign, CampaignStep, Contact, Enrolment, utcnow
from ground.errors import RetentiondError
from ground.send_states import EnrolmentStatus

# Ids per statement. Large enough that a typical batch is one statement, small enough for
# SQLite's bound-parameter limit (32,766 since 3.32) and PostgreSQL's (65,535).
CHUNK = 10_000
OPEN_STATUSES = (EnrolmentStatus.ACTIVE, EnrolmentStatus.WAITING)  # may still send


class CampaignError(RetentiondError):
    """A campaign that cannot take enrolments: unknown slug, inactive, or no steps."""


def _resolve(campaign: Campaign | str) -> Campaign:
    if isinstance(campaign, Campaign):
        return campaign
    found = Campaign.get_or_none(Campaign.slug == campaign)
    if found is None:
        raise CampaignError(f"unknown campaign {campaign!r}")
    return found


def _chunks(ids: Sequence[int]) -> list[list[int]]:
    unique = sorted(set(ids))
    return [unique[i:i + CHUNK] for i in range(0, len(unique), CHUNK)]


def enrol(contact_ids: Sequence[int], campaign: Campaign | str, *, now: dt.datetime | None = None) -> int:
    """Enrol contacts in an active campaign; return how many were newly enrolled.

    One INSERT ... SELECT per chunk of ids: contacts already enrolled (in any status) are left
    alone, ids of contacts that do not exist are skipped. The first step is due at
    ``now`` + its delay.
    """
    campaign = _resolve(campaign)
    if not campaign.active:
        raise CampaignError(f"campaign {campaign.slug!r} is inactive")
    first = (CampaignStep.select(CampaignStep.delay_s)
             .where((CampaignStep.campaign == campaign.id) & (CampaignStep.position == 0))
             .first())
    if first is None:
        raise CampaignError(f"campaign {campaign.slug!r} has no steps")
    now = now or utcnow()
    due = now + dt.timedelta(seconds=first.delay_s)
    enrolled = 0
    with database.atomic():
        for chunk in _chunks(contact_ids):
            rows = (Contact
                    .select(Contact.id, peewee.Value(campaign.id), peewee.Value(EnrolmentStatus.ACTIVE.value), peewee.Value(0),
                            peewee.Value(due), peewee.Value(now))
                    .where(Contact.id.in_(chunk)))
            query = (Enrolment
                     .insert_from(rows, fields=[Enrolment.contact, Enrolment.campaign, Enrolment.status,
                                                Enrolment.next_position, Enrolment.next_due_at,
                                                Enrolment.enrolled_at])
                     .on_conflict(action="IGNORE")
                     .as_rowcount())
            enrolled += query.execute()
    return enrolled


def campaigns_triggered_by(event_type: str) -> list[Campaign]:
    """The active campaigns that an event of this type enrols its contact in."""
    return list(Campaign.select()
                .where((Campaign.trigger_event == event_type) & (Campaign.active == True))  # noqa: E712
                .order_by(Campaign.id))


def exit_enrolments(contact_ids: Sequence[int], event_type: str, *, reason: str | None = None,
                    now: dt.datetime | None = None) -> int:
    """End the open enrolments of these contacts in every campaign that exits on ``event_type``.

    Returns how many enrolments were exited. Campaigns are few, so their ``exit_on`` lists are
    read in Python (it is JSON text, not queryable the same way on both engines); then one
    UPDATE per chunk of contacts.
    """
    campaign_ids = [c.id for c in Campaign.select(Campaign.id, Campaign.exit_on) if event_type in (c.exit_on or ())]
    if not campaign_ids or not contact_ids:
        return 0
    now = now or utcnow()
    exited = 0
    with database.atomic():
        for chunk in _chunks(contact_ids):
            exited += (Enrolment
                       .update(status=EnrolmentStatus.EXITED, finished_at=now, exit_reason=(reason or event_type)[:100])
                       .where(Enrolment.contact.in_(chunk)
                              & Enrolment.campaign.in_(campaign_ids)
                              & Enrolment.status.in_(OPEN_STATUSES))
                       .execute())
    return exited


def follow_campaigns(kind: str, contact_ids: Sequence[int], reason: str | None = None) -> list[str]:
    """What an event means for campaigns (contract: ``exit_on`` and ``trigger`` take any event
    type): the contacts leave every campaign listing ``kind`` in ``exit_on``, then enter every
    active campaign triggered by ``kind`` (a contact already enrolled there, even finished, is left
    alone). A campaign that cannot take them (no steps) is not an error: returned as a note for
    the caller to keep (the event processor writes it on the event)."""
    notes: list[str] = []
    if not contact_ids:
        return notes
    exit_enrolments(contact_ids, kind, reason=reason or kind)
    for campaign in campaigns_triggered_by(kind):
        try:
            enrol(contact_ids, campaign)
        except CampaignError as exc:
            notes.append(str(exc))
    return notes
