"""Enrolling contacts in campaigns and taking them out, set-based.

A contact is enrolled at most once per campaign, ever: the unique (contact, campaign) pair and
``ON CONFLICT DO NOTHING`` make enrolment idempotent, so a repeated trigger event, a retried
import or a redelivered message never restarts a sequence, not even one already completed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import peewee

from db.database import database
from db.models import Campaign, CampaignStep, Contact, Enrolment, utcnow
from ground.errors import RetentiondError
from ground.send_states import EnrolmentStatus

# Ids per statement. Large enough that a typical batch is one statement, small enough for
# SQLite's bound-parameter limit (32,766 since 3.32) and PostgreSQL's (65,535).
CHUNK = 10_000
OPEN_STATUSES = (EnrolmentStatus.ACTIVE, EnrolmentStatus.WAITING, EnrolmentStatus.PAUSED)  # may still send


class CampaignError(RetentiondError):
    """A campaign that cannot take enrolments: unknown slug, inactive, paused, archived, or no steps."""


def refusal(campaign: Campaign) -> str | None:
    """Why a campaign takes no new enrolment (its file's ``active: false``, or an operator paused or
    archived it), or None when it takes them."""
    if campaign.archived_at is not None:
        return f"campaign {campaign.slug!r} is archived"
    if campaign.paused_at is not None:
        return f"campaign {campaign.slug!r} is paused"
    if not campaign.active:
        return f"campaign {campaign.slug!r} is inactive"
    return None


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
    if (refused := refusal(campaign)) is not None:
        raise CampaignError(refused)
    first = (CampaignStep.select(CampaignStep.delay_s)
             .where((CampaignStep.campaign == campaign.id) & (CampaignStep.position == 0))
             .first())
    if first is None:
        raise CampaignError(f"campaign {campaign.slug!r} has no steps")
    return _insert_enrolments(contact_ids, campaign.id, first.delay_s, now or utcnow())


def _insert_enrolments(contact_ids: Sequence[int], campaign_id: int, delay_s: int, now: dt.datetime) -> int:
    due = now + dt.timedelta(seconds=delay_s)
    enrolled = 0
    with database.atomic():
        for chunk in _chunks(contact_ids):
            rows = (Contact
                    .select(Contact.id, peewee.Value(campaign_id), peewee.Value(EnrolmentStatus.ACTIVE.value), peewee.Value(0),
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
                .where((Campaign.trigger_event == event_type) & (Campaign.active == True)  # noqa: E712
                       & Campaign.paused_at.is_null() & Campaign.archived_at.is_null())
                .order_by(Campaign.id))


def exit_enrolments(contact_ids: Sequence[int], event_type: str, *, reason: str | None = None,
                    now: dt.datetime | None = None) -> int:
    """End the open enrolments of these contacts in every campaign that exits on ``event_type``.

    Returns how many enrolments were exited. Campaigns are few, so their ``exit_on`` lists are
    read in Python (it is JSON text, not queryable the same way on both engines); then one
    UPDATE per chunk of contacts.
    """
    campaign_ids = [c.id for c in Campaign.select(Campaign.id, Campaign.exit_on) if event_type in (c.exit_on or ())]
    return _exit(contact_ids, campaign_ids, reason or event_type, now or utcnow())


def exit_campaign(contact_ids: Sequence[int], campaign_id: int, reason: str, now: dt.datetime) -> int:
    """End these contacts' open enrolments in one campaign; returns how many."""
    return _exit(contact_ids, [campaign_id], reason, now)


def _exit(contact_ids: Sequence[int], campaign_ids: Sequence[int], reason: str, now: dt.datetime) -> int:
    if not campaign_ids or not contact_ids:
        return 0
    exited = 0
    with database.atomic():
        for chunk in _chunks(contact_ids):
            exited += (Enrolment
                       .update(status=EnrolmentStatus.EXITED, finished_at=now, exit_reason=reason[:100])
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
    if not contact_ids:
        return []
    return CampaignRules.load().follow(kind, contact_ids, reason)


@dataclass(frozen=True)
class CampaignRules:
    """Every campaign's trigger, ``exit_on`` and first step, read once (two queries) so that a
    batch of events follows them without a query per event. Campaigns are few: all of them fit."""

    campaigns: tuple[Campaign, ...]
    first_delay_s: Mapping[int, int]  # campaign id -> its first step's delay; absent: no steps

    @classmethod
    def load(cls) -> CampaignRules:
        campaigns = tuple(Campaign.select(Campaign.id, Campaign.slug, Campaign.active, Campaign.paused_at,
                                          Campaign.archived_at, Campaign.trigger_event, Campaign.exit_on)
                          .order_by(Campaign.id))
        firsts = {step.campaign_id: step.delay_s for step in CampaignStep.select(CampaignStep.campaign,
                                                                                   CampaignStep.delay_s)
                  .where(CampaignStep.position == 0)}
        return cls(campaigns, firsts)

    def exits_and_triggers(self, kind: str) -> bool:
        """True when one campaign both starts and ends on ``kind``: a contact's second such event
        then exits what its first one enrolled, so events of one contact must be followed in turn."""
        return any(c.trigger_event == kind and refusal(c) is None and kind in (c.exit_on or ()) for c in self.campaigns)

    def follow(self, kind: str, contact_ids: Sequence[int], reason: str | None = None,
               now: dt.datetime | None = None) -> list[str]:
        """``follow_campaigns`` with these rules: one UPDATE, then one INSERT per triggered campaign."""
        notes: list[str] = []
        if not contact_ids:
            return notes
        now = now or utcnow()
        _exit(contact_ids, [c.id for c in self.campaigns if kind in (c.exit_on or ())], reason or kind, now)
        for campaign in self.campaigns:
            if campaign.trigger_event != kind or campaign.archived_at is not None or not campaign.active:
                continue
            if campaign.paused_at is not None:  # said on the event: "why was this lead not enrolled?"
                notes.append(f"campaign {campaign.slug!r} is paused")
                continue
            try:
                self.enrol(contact_ids, campaign.slug, now)
            except CampaignError as exc:
                notes.append(str(exc))
        return notes

    def enrol(self, contact_ids: Sequence[int], slug: str, now: dt.datetime | None = None) -> int:
        """``enrol`` with these rules (the same checks and messages): one INSERT ... SELECT."""
        campaign = next((c for c in self.campaigns if c.slug == slug), None)
        if campaign is None:
            raise CampaignError(f"unknown campaign {slug!r}")
        if (refused := refusal(campaign)) is not None:
            raise CampaignError(refused)
        if campaign.id not in self.first_delay_s:
            raise CampaignError(f"campaign {campaign.slug!r} has no steps")
        return _insert_enrolments(contact_ids, campaign.id, self.first_delay_s[campaign.id], now or utcnow())
