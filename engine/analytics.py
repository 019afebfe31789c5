"""How a campaign performs: per campaign and per step, overall, by channel and by day — enrolled,
planned, sent, delivered, failed, skipped (by reason), clicked (unique contacts and total),
converted, revenue, and the click-through and conversion rates.

Three set-based queries per report, whatever the campaign's size: its sends grouped by step,
channel, status, delivery status, skip reason and day; its attributions grouped by step, kind, day
and contact (the contact so that unique clickers and converters can be counted for any
dimension); its enrolments by status. Each reads the campaign's rows on an index leading with the
campaign (``send(campaign_id, step_id)``, ``attribution(campaign_id, kind)``,
``enrolment(campaign_id, status)``), not the whole table; tests/test_analytics.py shows the plans
on a million sends. Test sends have no campaign, so they never count.

Definitions: *planned* is every send made for the step (a template error included: it failed at
once); *in flight* are those not finished yet; *delivered* is what the provider's receipt said;
a *fallback* is counted as skipped on its own step ("fell back") and its replacement as a send of
the same step on the other channel; click-through = unique clickers / sent; conversion rate =
converting contacts / sent. Clicks and conversions are attributed to the step of the send that
caused them (the last touch); by channel, to the channel that send went by (a fallback's), or its
step's when the send is gone.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

import peewee

from db.database import rows
from db.models import Attribution, Campaign, CampaignStep, Enrolment, Send
from ground.send_states import SendStatus
from ground.vocabulary import EventType

FINISHED = {SendStatus.SENT, SendStatus.FAILED, SendStatus.SKIPPED}


@dataclass
class Funnel:
    planned: int = 0
    in_flight: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    clicks: int = 0
    clickers: set[int] = field(default_factory=set)
    conversions: int = 0
    converters: set[int] = field(default_factory=set)
    revenue: float = 0.0

    @property
    def unique_clicks(self) -> int:
        return len(self.clickers)

    @property
    def converted(self) -> int:
        return len(self.converters)

    @property
    def click_through_rate(self) -> float | None:
        return self.unique_clicks / self.sent if self.sent else None

    @property
    def conversion_rate(self) -> float | None:
        return self.converted / self.sent if self.sent else None

    def add_sends(self, status: str, delivery: str | None, reason: str | None, count: int) -> None:
        self.planned += count
        if status == SendStatus.SENT:
            self.sent += count
        elif status == SendStatus.FAILED:
            self.failed += count
        elif status == SendStatus.SKIPPED:
            self.skipped += count
            kind = reason_kind(reason)
            self.skipped_by_reason[kind] = self.skipped_by_reason.get(kind, 0) + count
        if status not in FINISHED:
            self.in_flight += count
        if delivery == "delivered":
            self.delivered += count

    def add_attributions(self, kind: str, contact_id: int | None, count: int, value: float | None) -> None:
        if kind == EventType.CLICK:
            self.clicks += count
            if contact_id is not None:
                self.clickers.add(contact_id)
        elif kind == EventType.CONVERSION:
            self.conversions += count
            self.revenue += value or 0.0
            if contact_id is not None:
                self.converters.add(contact_id)


def reason_kind(reason: str | None) -> str:
    """A skip reason without its particulars: "daily cap: 3 sends in the last 24 h" -> "daily cap"."""
    return (reason or "unknown").split(":", 1)[0].strip() or "unknown"


@dataclass
class StepReport:
    step_id: int | None  # None: sends whose step was deleted since
    position: int | None
    channel: str | None
    funnel: Funnel


@dataclass
class CampaignReport:
    campaign: Campaign
    enrolled: dict[str, int]  # by enrolment status
    overall: Funnel
    steps: list[StepReport]
    by_channel: dict[str, Funnel]
    by_day: dict[dt.date, Funnel]


def campaign_report(campaign: Campaign) -> CampaignReport:
    steps = {s.id: s for s in CampaignStep.select().where(CampaignStep.campaign == campaign.id)}
    overall = Funnel()
    per_step: dict[int | None, Funnel] = defaultdict(Funnel)
    per_channel: dict[str, Funnel] = defaultdict(Funnel)
    per_day: dict[dt.date, Funnel] = defaultdict(Funnel)

    day = peewee.fn.DATE(Send.created_at)
    reason = peewee.Case(None, [(Send.status == SendStatus.SKIPPED, Send.reason)], None)
    for step_id, channel, status, delivery, why, on, count in rows(
            Send.select(Send.step, Send.channel, Send.status, Send.delivery_status, reason, day, peewee.fn.COUNT(Send.id))
            .where(Send.campaign == campaign.id)
            .group_by(Send.step, Send.channel, Send.status, Send.delivery_status, reason, day)):
        for funnel in (overall, per_step[step_id], per_channel[channel], per_day[_date(on)]):
            funnel.add_sends(status, delivery, why, count)

    day = peewee.fn.DATE(Attribution.created_at)
    for step_id, kind, on, contact_id, sent_on, count, value in rows(
            Attribution.select(Attribution.step, Attribution.kind, day, Attribution.contact, Send.channel,
                               peewee.fn.COUNT(Attribution.id), peewee.fn.SUM(Attribution.value))
            .join(Send, peewee.JOIN.LEFT_OUTER, on=(Attribution.send == Send.id))
            .where(Attribution.campaign == campaign.id)
            .group_by(Attribution.step, Attribution.kind, day, Attribution.contact, Send.channel)):
        # the channel of the send that was clicked (a fallback's), else of its step
        channel = sent_on or (steps[step_id].channel if step_id in steps else None)
        funnels: list[Funnel] = [overall, per_step[step_id], per_day[_date(on)]]
        if channel is not None:
            funnels.append(per_channel[channel])
        for funnel in funnels:
            funnel.add_attributions(kind, contact_id, count, value)

    enrolled = dict(rows(Enrolment.select(Enrolment.status, peewee.fn.COUNT(Enrolment.id))
                         .where(Enrolment.campaign == campaign.id).group_by(Enrolment.status)))
    ordered = sorted(set(steps) | set(per_step), key=lambda i: (steps[i].position if i in steps else 1 << 30, i or 0))
    return CampaignReport(
        campaign=campaign, enrolled=enrolled, overall=overall,
        steps=[StepReport(i, steps[i].position if i in steps else None, steps[i].channel if i in steps else None,
                          per_step.get(i, Funnel())) for i in ordered],
        by_channel=dict(sorted(per_channel.items())), by_day=dict(sorted(per_day.items())))


def _date(value: object) -> dt.date:
    """SQLite's DATE() is text, PostgreSQL's a date."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))

