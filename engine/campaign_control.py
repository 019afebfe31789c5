"""An operator's switches on a running campaign (admin API), apart from its file so that
re-applying the file keeps them:

- **pause**: no new enrolment (events that trigger it, or naming it, are refused with a note) and
  no step planned: its ``active`` enrolments become ``paused``, and one whose step is under way
  becomes ``paused`` when that step is done (``outcomes.advance_enrolments``). Sends already
  planned still go out: a pause stops the sequence, not the messages already on their way.
- **resume**: its paused enrolments become ``active`` again, with their due times (one due during
  the pause is planned at the next tick).
- **archive**: ended for good: paused, every open enrolment exited (``campaign archived``), its
  sends still in the outbox skipped (those already on a channel queue go out); a resume is
  refused. Its rows stay, for analytics.
"""

from __future__ import annotations

import datetime as dt

import peewee

from db.database import database
from db.models import Campaign, Enrolment, utcnow
from engine.enrolments import OPEN_STATUSES
from engine.sends import skip_planned
from ground.send_states import EnrolmentStatus

ARCHIVED_REASON = "campaign archived"


class CampaignStateError(ValueError):
    """The switch does not apply to the campaign as it is (resuming an archived one)."""


def pause(campaign: Campaign, now: dt.datetime | None = None) -> Campaign:
    """Idempotent; returns the campaign as it now is."""
    with database.atomic():
        (Campaign.update(paused_at=now or utcnow()).where((Campaign.id == campaign.id) & Campaign.paused_at.is_null())
         .execute())
        (Enrolment.update(status=EnrolmentStatus.PAUSED)
         .where((Enrolment.campaign == campaign.id) & (Enrolment.status == EnrolmentStatus.ACTIVE)).execute())
    return Campaign.get_by_id(campaign.id)


def resume(campaign: Campaign) -> Campaign:
    """Idempotent; ``CampaignStateError`` for an archived campaign."""
    if campaign.archived_at is not None:
        raise CampaignStateError(f"campaign {campaign.slug!r} is archived; an archived campaign is not resumed")
    with database.atomic():
        Campaign.update(paused_at=None).where(Campaign.id == campaign.id).execute()
        (Enrolment.update(status=EnrolmentStatus.ACTIVE)
         .where((Enrolment.campaign == campaign.id) & (Enrolment.status == EnrolmentStatus.PAUSED)).execute())
    return Campaign.get_by_id(campaign.id)


def archive(campaign: Campaign, now: dt.datetime | None = None) -> Campaign:
    """Idempotent; returns the campaign as it now is."""
    now = now or utcnow()
    with database.atomic():
        (Campaign.update(paused_at=peewee.fn.COALESCE(Campaign.paused_at, now), archived_at=now)
         .where((Campaign.id == campaign.id) & Campaign.archived_at.is_null()).execute())
        (Enrolment.update(status=EnrolmentStatus.EXITED, finished_at=now, exit_reason=ARCHIVED_REASON)
         .where((Enrolment.campaign == campaign.id) & Enrolment.status.in_(OPEN_STATUSES)).execute())
        skip_planned(campaign.id, ARCHIVED_REASON, now)
    return Campaign.get_by_id(campaign.id)
