"""What each console page shows, gathered in one database session per page (engine queries only;
the templates do no work)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from db.database import db_session
from db.models import Campaign, Contact, Decision, InboundEvent, Send, utcnow
from engine.analytics import CampaignReport, campaign_report
from engine.contacts import InvalidContact, contact_key
from engine.stats import channel_activity
from ground.channels import CHANNELS
from ground.settings import Settings
from ground.vocabulary import InboundStatus

RECENT = 20


@dataclass(frozen=True)
class ChannelRow:
    name: str
    rate_limit: str
    planned: int
    queued: int
    sending: int
    sent_per_s: float


def overview(settings: Settings) -> dict[str, Any]:
    """The overview page: every running campaign's funnel, the channels, the recent failures."""
    with db_session():
        campaigns = [campaign_report(c) for c in Campaign.select().where(Campaign.archived_at.is_null())
                     .order_by(Campaign.id)]
        activity = channel_activity(utcnow())
        channels = [ChannelRow(name, _rate(settings, name), int(activity.get(name, {}).get("planned", 0)),
                               int(activity.get(name, {}).get("queued", 0) + activity.get(name, {}).get("retrying", 0)),
                               int(activity.get(name, {}).get("sending", 0)), activity.get(name, {}).get("sent_per_s", 0.0))
                    for name in CHANNELS]
        slugs: dict[int | None, str] = {c.id: c.slug for c in Campaign.select(Campaign.id, Campaign.slug)}
        failed_sends = [{"id": s.id, "channel": s.channel, "campaign": slugs.get(s.campaign_id, "-"),
                         "reason": s.reason, "at": s.finished_at}
                        for s in Send.select(Send.id, Send.channel, Send.campaign, Send.reason, Send.finished_at)
                        .where(Send.status == "failed").order_by(Send.id.desc()).limit(RECENT)]
        failed_events = list(InboundEvent.select(InboundEvent.id, InboundEvent.source, InboundEvent.type,
                                                 InboundEvent.status, InboundEvent.error, InboundEvent.received_at)
                             .where(InboundEvent.status.in_((InboundStatus.FAILED, InboundStatus.UNMAPPABLE)))
                             .order_by(InboundEvent.id.desc()).limit(RECENT))
    return {"campaigns": campaigns, "channels": channels, "failed_sends": failed_sends, "failed_events": failed_events}


def _rate(settings: Settings, channel: str) -> str:
    rate = settings.rate(channel)
    return "unlimited" if rate.count is None else f"{rate.count:g} per {rate.period_s:g} s"


def campaign_page(slug: str) -> CampaignReport | None:
    with db_session():
        campaign = Campaign.get_or_none(Campaign.slug == slug)
        return campaign_report(campaign) if campaign is not None else None


def contact_page(query: str, settings: Settings) -> dict[str, Any]:
    """A contact found by email, phone or external id, and its decision log, newest first."""
    query = query.strip()
    if not query:
        return {"query": "", "contact": None, "decisions": [], "problem": None}
    key = {"email": query} if "@" in query else {"phone": query} if query.lstrip("+").replace(" ", "").isdigit() \
        else {"external_id": query}
    with db_session():
        try:
            field, value = contact_key(key, settings.default_region)
        except InvalidContact as exc:
            return {"query": query, "contact": None, "decisions": [], "problem": str(exc)}
        contact = Contact.get_or_none(getattr(Contact, field) == value)
        if contact is None and field == "phone":  # digits may be an external id too
            contact = Contact.get_or_none(Contact.external_id == query)
        decisions = [] if contact is None else list(
            Decision.select().where(Decision.contact == contact.id).order_by(Decision.id.desc()).limit(100))
        slugs: dict[int | None, str] = {c.id: c.slug for c in Campaign.select(Campaign.id, Campaign.slug)}
    return {"query": query, "contact": contact, "problem": None if contact else "no such contact",
            "decisions": [{"at": d.created_at, "campaign": slugs.get(d.campaign_id, "-"), "channel": d.channel,
                           "outcome": d.outcome, "reason": d.reason, "until": d.until} for d in decisions]}
