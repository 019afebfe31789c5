"""``/api/v1/campaigns``: list, get, apply a campaign file (YAML or JSON) with the CLI's checks;
pause, resume, archive (``engine/campaign_control.py``); enrol and unenrol contacts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from daemon.web.api.problems import Problem
from daemon.web.api.registry import API
from daemon.web.api.types import BodyIn, Out, Page, PageQuery, PathIn, UtcTime, page_of
from db.models import Campaign, CampaignStep, Enrolment
from engine import campaign_control
from engine.campaign_file import MAX_FILE_CHARS, CampaignFileError, parse_campaign_text
from engine.campaigns import apply_campaign, template_warnings
from engine.enrolments import CampaignError
from engine.manual import ErasedContact, enrol_contact, unenrol_contact
from ground.send_states import EnrolmentStatus
from ground.settings import Settings

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
    state: Literal["running", "inactive", "paused", "archived"] = Field(
        description="running; inactive (its file says active: false: no new enrolment); paused; archived")
    trigger_event: str | None = Field(description="the event that enrols a contact; null: manual enrolment only")
    exit_on: list[str]
    limits: dict[str, Any]
    active: bool = Field(description="the file's own switch")
    paused_at: UtcTime | None
    archived_at: UtcTime | None
    version: int
    steps: list[StepOut]
    created_at: UtcTime
    updated_at: UtcTime


class CampaignPath(PathIn):
    slug: str = Field(pattern=SLUG_PATTERN, max_length=100)


class CampaignList(PageQuery):
    archived: bool = Field(False, description="list the archived campaigns instead of the others")


class EnrolmentOut(Out):
    id: int
    contact_id: int
    campaign_id: int
    status: EnrolmentStatus
    next_position: int
    next_due_at: UtcTime | None
    enrolled_at: UtcTime
    finished_at: UtcTime | None
    exit_reason: str | None


class EnrolIn(BodyIn):
    contact_id: int = Field(ge=1, le=2**63 - 1)


class EnrolmentPath(PathIn):
    slug: str = Field(pattern=SLUG_PATTERN, max_length=100)
    contact_id: int = Field(ge=1, le=2**63 - 1)


class EnrolmentList(PageQuery):
    status: EnrolmentStatus | None = None


class ApplyOut(Out):
    slug: str
    action: Literal["created", "updated", "unchanged"]
    version: int
    warnings: list[str] = Field(description="template names no contact has, as `campaign apply` prints them")


def _state(campaign: Campaign) -> str:
    if campaign.archived_at is not None:
        return "archived"
    if campaign.paused_at is not None:
        return "paused"
    return "running" if campaign.active else "inactive"


def campaigns_out(campaigns: list[Campaign]) -> list[CampaignOut]:
    """The campaigns with their steps: one query for the steps of all of them."""
    steps: dict[int, list[StepOut]] = {c.id: [] for c in campaigns}
    if campaigns:
        for step in (CampaignStep.select().where(CampaignStep.campaign.in_(list(steps)))
                     .order_by(CampaignStep.campaign, CampaignStep.position)):
            steps[step.campaign_id].append(StepOut.model_validate(step))
    return [CampaignOut.model_validate({**c.__data__, "state": _state(c), "exit_on": c.exit_on or [],
                                        "limits": c.limits or {}, "steps": steps[c.id]}) for c in campaigns]


def campaign_out(campaign: Campaign) -> CampaignOut:
    return campaigns_out([campaign])[0]


def find_campaign(slug: str) -> Campaign:
    campaign = Campaign.get_or_none(Campaign.slug == slug)
    if campaign is None:
        raise Problem(404, f"no campaign {slug!r}")
    return campaign


@API.get("/campaigns", tag="campaigns")
def list_campaigns(query: CampaignList) -> Page[CampaignOut]:
    """The campaigns, oldest first, with their steps: those not archived, or (``archived=true``)
    the archived ones."""
    select = Campaign.select().where(Campaign.archived_at.is_null(not query.archived))
    found, cursor = page_of(select, Campaign.id, query)
    return Page[CampaignOut](items=campaigns_out(found), next_cursor=cursor)


@API.get("/campaigns/{slug}", tag="campaigns")
def get_campaign(path: CampaignPath) -> CampaignOut:
    """One campaign, with its steps."""
    return campaign_out(find_campaign(path.slug))


@API.put("/campaigns", tag="campaigns", errors=(422,))
def apply(text: str, settings: Settings) -> ApplyOut:
    """Create or update a campaign from its file, YAML or JSON (JSON is YAML): the checks and
    messages of ``retentiond campaign apply``; every problem of the file is listed at once (422)."""
    if len(text) > MAX_FILE_CHARS:
        raise Problem(413, f"larger than {MAX_FILE_CHARS} characters: not a campaign file")
    try:
        spec = parse_campaign_text(text, "campaign", settings.layouts_dir)
    except CampaignFileError as exc:
        raise Problem(422, exc.errors[0], errors=[{"field": "body", "message": e} for e in exc.errors]) from None
    warnings = template_warnings([spec])
    result = apply_campaign(spec)
    return ApplyOut(slug=result.slug, action=result.action, version=result.version, warnings=warnings)


@API.post("/campaigns/{slug}/pause", tag="campaigns")
def pause(path: CampaignPath) -> CampaignOut:
    """No new enrolment and no step planned until resumed (sends already planned still go out).
    Idempotent."""
    return campaign_out(campaign_control.pause(find_campaign(path.slug)))


@API.post("/campaigns/{slug}/resume", tag="campaigns", errors=(409,))
def resume(path: CampaignPath) -> CampaignOut:
    """The paused enrolments go on, with their due times. Idempotent; 409 for an archived campaign."""
    try:
        return campaign_out(campaign_control.resume(find_campaign(path.slug)))
    except campaign_control.CampaignStateError as exc:
        raise Problem(409, str(exc)) from None


@API.post("/campaigns/{slug}/archive", tag="campaigns")
def archive(path: CampaignPath) -> CampaignOut:
    """Ended for good: paused, every open enrolment exited; kept for analytics. Idempotent."""
    return campaign_out(campaign_control.archive(find_campaign(path.slug)))


@API.get("/campaigns/{slug}/enrolments", tag="enrolments")
def list_enrolments(path: CampaignPath, query: EnrolmentList) -> Page[EnrolmentOut]:
    """The campaign's enrolments, oldest first, by status."""
    select = Enrolment.select().where(Enrolment.campaign == find_campaign(path.slug).id)
    if query.status is not None:
        select = select.where(Enrolment.status == query.status)
    found, cursor = page_of(select, Enrolment.id, query)
    return Page[EnrolmentOut](items=[EnrolmentOut.model_validate(e) for e in found], next_cursor=cursor)


@API.post("/campaigns/{slug}/enrolments", tag="enrolments", errors=(404, 409))
def enrol(path: CampaignPath, body: EnrolIn, settings: Settings) -> EnrolmentOut:
    """Enrol a contact (its first step planned at once when it has no delay); a contact already
    enrolled, even finished, is left as it is. 409 when the campaign takes no enrolment (inactive,
    paused, archived, no steps)."""
    campaign = find_campaign(path.slug)
    try:
        enrolment = enrol_contact(settings, body.contact_id, campaign.slug)
    except (CampaignError, ErasedContact) as exc:
        raise Problem(409, str(exc)) from None
    if enrolment is None:
        raise Problem(404, f"no contact {body.contact_id}")
    return EnrolmentOut.model_validate(enrolment)


@API.delete("/campaigns/{slug}/enrolments/{contact_id}", tag="enrolments", errors=(404,))
def unenrol(path: EnrolmentPath) -> EnrolmentOut:
    """End the contact's open enrolment (``unenrolled by an operator``); a finished one is left as
    it is. 404 when the contact was never enrolled there."""
    enrolment = unenrol_contact(path.contact_id, find_campaign(path.slug).id)
    if enrolment is None:
        raise Problem(404, f"contact {path.contact_id} is not enrolled in {path.slug!r}")
    return EnrolmentOut.model_validate(enrolment)
