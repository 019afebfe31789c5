"""``/api/v1/campaigns``: list, get, and apply a campaign file (YAML or JSON) with the CLI's checks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from daemon.web.api.problems import Problem
from daemon.web.api.registry import API
from daemon.web.api.types import Out, Page, PageQuery, PathIn, UtcTime, page_of
from db.models import Campaign, CampaignStep
from engine.campaign_file import MAX_FILE_CHARS, CampaignFileError, parse_campaign_text
from engine.campaigns import apply_campaign, template_warnings

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,99}$"


class StepOut(Out):
    id: int
    position: int
    channel: str
    delay_s: int
    subject: str | None
    body: str
    fallback_channel: str | None


class CampaignOut(Out):
    id: int
    slug: str
    name: str
    trigger_event: str | None = Field(description="the event that enrols a contact; null: manual enrolment only")
    exit_on: list[str]
    limits: dict[str, Any]
    active: bool
    version: int
    steps: list[StepOut]
    created_at: UtcTime
    updated_at: UtcTime


class CampaignPath(PathIn):
    slug: str = Field(pattern=SLUG_PATTERN, max_length=100)


class ApplyOut(Out):
    slug: str
    action: Literal["created", "updated", "unchanged"]
    version: int
    warnings: list[str] = Field(description="template names no contact has, as `campaign apply` prints them")


def campaign_out(campaign: Campaign) -> CampaignOut:
    steps = CampaignStep.select().where(CampaignStep.campaign == campaign.id).order_by(CampaignStep.position)
    return CampaignOut.model_validate({**campaign.__data__, "exit_on": campaign.exit_on or [],
                                       "limits": campaign.limits or {},
                                       "steps": [StepOut.model_validate(s) for s in steps]})


def find_campaign(slug: str) -> Campaign:
    campaign = Campaign.get_or_none(Campaign.slug == slug)
    if campaign is None:
        raise Problem(404, f"no campaign {slug!r}")
    return campaign


@API.get("/campaigns", tag="campaigns")
def list_campaigns(query: PageQuery) -> Page[CampaignOut]:
    """Every campaign, oldest first, with its steps."""
    found, cursor = page_of(Campaign.select(), Campaign.id, query)
    return Page[CampaignOut](items=[campaign_out(c) for c in found], next_cursor=cursor)


@API.get("/campaigns/{slug}", tag="campaigns")
def get_campaign(path: CampaignPath) -> CampaignOut:
    """One campaign, with its steps."""
    return campaign_out(find_campaign(path.slug))


@API.put("/campaigns", tag="campaigns", errors=(422,))
def apply(text: str) -> ApplyOut:
    """Create or update a campaign from its file, YAML or JSON (JSON is YAML): the checks and
    messages of ``retentiond campaign apply``; every problem of the file is listed at once (422)."""
    if len(text) > MAX_FILE_CHARS:
        raise Problem(413, f"larger than {MAX_FILE_CHARS} characters: not a campaign file")
    try:
        spec = parse_campaign_text(text, "campaign")
    except CampaignFileError as exc:
        raise Problem(422, exc.errors[0], errors=[{"field": "body", "message": e} for e in exc.errors]) from None
    warnings = template_warnings([spec])
    result = apply_campaign(spec)
    return ApplyOut(slug=result.slug, action=result.action, version=result.version, warnings=warnings)
