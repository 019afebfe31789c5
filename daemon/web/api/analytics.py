"""``/api/v1/campaigns/{slug}/analytics``: the campaign's funnel, overall, per step, by channel
and by day (``engine/analytics.py``)."""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from daemon.web.api.campaigns import CampaignPath, find_campaign
from daemon.web.api.registry import API
from daemon.web.api.types import Out
from engine.analytics import CampaignReport, Funnel, campaign_report


class FunnelOut(Out):
    planned: int = Field(description="sends made for it (a template error included)")
    in_flight: int = Field(description="not finished yet: planned, queued, sending, retrying")
    sent: int
    delivered: int = Field(description="as the provider's receipt said")
    failed: int
    skipped: int
    skipped_by_reason: dict[str, int]
    clicked: int = Field(description="unique contacts who clicked")
    clicks: int = Field(description="every click")
    converted: int = Field(description="unique contacts who converted")
    conversions: int
    revenue: float
    click_through_rate: float | None = Field(description="clicked / sent; null when nothing was sent")
    conversion_rate: float | None = Field(description="converted / sent; null when nothing was sent")


class StepFunnelOut(Out):
    step_id: int | None = Field(description="null: sends of a step deleted since")
    position: int | None
    channel: str | None
    funnel: FunnelOut


class CampaignAnalyticsOut(Out):
    slug: str
    enrolled: dict[str, int] = Field(description="enrolments by status")
    overall: FunnelOut
    steps: list[StepFunnelOut]
    by_channel: dict[str, FunnelOut]
    by_day: dict[dt.date, FunnelOut] = Field(description="by the UTC day the sends were planned, clicks made")


def funnel_out(f: Funnel) -> FunnelOut:
    return FunnelOut(planned=f.planned, in_flight=f.in_flight, sent=f.sent, delivered=f.delivered, failed=f.failed,
                     skipped=f.skipped, skipped_by_reason=f.skipped_by_reason, clicked=f.unique_clicks, clicks=f.clicks,
                     converted=f.converted, conversions=f.conversions, revenue=round(f.revenue, 2),
                     click_through_rate=f.click_through_rate, conversion_rate=f.conversion_rate)


@API.get("/campaigns/{slug}/analytics", tag="analytics")
def campaign_analytics(path: CampaignPath) -> CampaignAnalyticsOut:
    """The campaign's funnel: enrolled, planned, sent, delivered, failed, skipped by reason, clicked,
    converted, revenue and the rates; overall, per step, by channel and by day. Test sends never count."""
    return analytics_out(campaign_report(find_campaign(path.slug)))


def analytics_out(report: CampaignReport) -> CampaignAnalyticsOut:
    """The report as the API (and ``retentiond report campaign --json``) gives it."""
    return CampaignAnalyticsOut(
        slug=report.campaign.slug, enrolled=report.enrolled, overall=funnel_out(report.overall),
        steps=[StepFunnelOut(step_id=s.step_id, position=s.position, channel=s.channel, funnel=funnel_out(s.funnel))
               for s in report.steps],
        by_channel={k: funnel_out(v) for k, v in report.by_channel.items()},
        by_day={k: funnel_out(v) for k, v in report.by_day.items()})
