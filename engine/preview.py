"""A campaign step rendered for one contact (or the sample contact) without sending or saving
anything: what the admin API's preview and ``retentiond preview`` show, and what a test send
sends. A template typo is a ``TemplateError`` here, before any send."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from db.models import Campaign, CampaignStep, Contact
from engine.campaigns import sample_contact
from engine.planner import contact_fields
from engine.templates import RenderJob, render
from ground.channels import CHANNELS


class NoSuchStep(LookupError):
    """The campaign has no step at that position."""


@dataclass(frozen=True)
class Preview:
    channel: str
    recipient: str | None  # the contact's address on the step's channel
    subject: str | None
    body: str  # the text (an email's text part, made from its HTML when the step gives none)
    links: tuple[tuple[str, str], ...]  # (the target URL, the tracked URL in the body)
    html: str | None = None  # an email's HTML part, in its layout, CSS inlined


def step_of(campaign: Campaign, position: int) -> CampaignStep:
    step = CampaignStep.get_or_none((CampaignStep.campaign == campaign.id) & (CampaignStep.position == position))
    if step is None:
        raise NoSuchStep(f"campaign {campaign.slug!r} has no step {position} (steps count from 0)")
    return step


def preview(step: CampaignStep, contact: Contact | None, public_url: str,
            overrides: Mapping[str, Any] | None = None) -> Preview:
    """The step rendered for ``contact`` (None: the sample contact), with ``overrides`` of its
    fields (a test send's address). Raises ``TemplateError``. The tracked links' tokens are made up
    and saved nowhere: they answer 404."""
    fields = contact_fields(contact) if contact is not None else sample_contact()
    fields = {**fields, **(overrides or {})}
    rendered = render(RenderJob(contact=fields, subject=step.subject, body=step.body, channel=step.channel,
                                html=step.html, layout=step.layout_html), public_url)
    base = public_url.rstrip("/")
    return Preview(channel=step.channel, recipient=fields.get(CHANNELS[step.channel].address_field),
                   subject=rendered.subject, body=rendered.body, html=rendered.html,
                   links=tuple((url, f"{base}/t/{token}") for token, url in rendered.links))
