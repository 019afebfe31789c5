"""Campaigns and contacts written straight to the database, for planner and log tests."""

from __future__ import annotations

from db.models import Campaign, CampaignStep, Contact


def campaign_with(*bodies: str, channel: str = "sms") -> Campaign:
    """The campaign 'welcome', one step per body, every step due at once."""
    campaign = Campaign.create(slug="welcome", name="Welcome")
    for position, body in enumerate(bodies):
        CampaignStep.create(campaign=campaign.id, position=position, channel=channel, body=body, delay_s=0)
    return campaign


def contacts(n: int) -> list[int]:
    """``n`` contacts with a phone, a name and a plan attribute; their ids."""
    return [Contact.create(external_id=f"c{i}", phone=f"+1201555{i:04d}", name=f"P{i}",
                           attributes={"plan": "pro"}).id for i in range(n)]
