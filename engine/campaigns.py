"""Campaigns in the database: apply validated files (upsert by slug), enrol and exit contacts.

Reading and validating files lives in ``engine.campaign_file``, enrolment in
``engine.enrolments``; both are re-exported here so callers have one place to import from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import peewee

from db.bulk import insert_many
from db.database import database
from db.models import Campaign, CampaignStep, Contact, utcnow
from engine.campaign_file import (
    CampaignFileError,
    CampaignSpec,
    StepSpec,
    load_campaign_file,
    parse_campaign_text,
)
from engine.enrolments import CampaignError, campaigns_triggered_by, enrol, exit_enrolments
from engine.templates import RenderJob, TemplateError, render

__all__ = [
    "ApplyResult", "CampaignError", "CampaignFileError", "CampaignSpec", "StepSpec",
    "apply_campaign", "apply_campaigns", "campaigns_triggered_by", "enrol", "exit_enrolments",
    "load_campaign_file", "parse_campaign_text", "template_warnings",
]

_STEP_FIELDS = ("channel", "delay_s", "subject", "body", "fallback_channel", "html", "layout", "layout_html", "voice")
SAMPLE_CONTACTS = 10_000  # the newest contacts whose attribute keys count as "in use"
_SAMPLE_PUBLIC_URL = "https://sample.invalid"  # link() needs a base; nothing is stored or sent


@dataclass(frozen=True)
class ApplyResult:
    """What applying one campaign did."""

    slug: str
    action: Literal["created", "updated", "unchanged"]
    version: int


def apply_campaigns(specs: Iterable[CampaignSpec]) -> list[ApplyResult]:
    """Create or update each campaign, one transaction per campaign."""
    return [apply_campaign(spec) for spec in specs]


def apply_campaign(spec: CampaignSpec) -> ApplyResult:
    """Upsert one campaign by slug; steps change in place by position.

    Enrolments are never touched: one waiting at a position that still exists gets that
    position's new content; one past the new last step is completed by the scheduler. The
    version moves only when something changed, so re-applying the same file is a no-op.
    """
    try:
        return _apply(spec)
    except peewee.IntegrityError:
        # Another process applied the same slug (or step positions) between our read and write;
        # its transaction has committed, so a second pass sees it and updates instead.
        return _apply(spec)


def _apply(spec: CampaignSpec) -> ApplyResult:
    wanted = _campaign_values(spec)
    with database.atomic():
        campaign = Campaign.get_or_none(Campaign.slug == spec.slug)
        if campaign is None:
            campaign = Campaign.create(slug=spec.slug, version=1, **wanted)
            insert_many(
                CampaignStep,
                [_step_row(campaign.id, position, step) for position, step in enumerate(spec.steps)]
            ).execute()
            return ApplyResult(spec.slug, "created", 1)

        changed = any(getattr(campaign, name) != value for name, value in wanted.items())
        changed |= _sync_steps(campaign.id, spec.steps)
        if not changed:
            return ApplyResult(spec.slug, "unchanged", campaign.version)
        (Campaign
         .update(version=Campaign.version + 1, updated_at=utcnow(), **wanted)
         .where(Campaign.id == campaign.id)
         .execute())
        return ApplyResult(spec.slug, "updated", campaign.version + 1)


def _campaign_values(spec: CampaignSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "trigger_event": spec.trigger_event,
        "exit_on": list(spec.exit_on),
        "limits": dict(spec.limits),
        "active": spec.active,
    }


def _step_row(campaign_id: int, position: int, step: StepSpec) -> dict[str, Any]:
    return {
        "campaign": campaign_id,
        "position": position,
        "channel": step.channel,
        "delay_s": step.delay_s,
        "subject": step.subject,
        "body": step.body,
        "fallback_channel": step.fallback_channel,
        "html": step.html,
        "layout": step.layout,
        "layout_html": step.layout_html,
        "voice": dict(step.voice),
    }


def _sync_steps(campaign_id: int, steps: tuple[StepSpec, ...]) -> bool:
    """Make the stored steps match ``steps``; True if anything changed.

    Rows are updated in place rather than replaced, so a step keeps its id, and the sends,
    tracked links and decisions that point at it keep pointing at it.
    """
    existing = {row.position: row for row in
                CampaignStep.select().where(CampaignStep.campaign == campaign_id)}
    changed = False
    new_rows = []
    for position, step in enumerate(steps):
        wanted = _step_row(campaign_id, position, step)
        row = existing.get(position)
        if row is None:
            new_rows.append(wanted)
            continue
        diff = {name: wanted[name] for name in _STEP_FIELDS if getattr(row, name) != wanted[name]}
        if diff:
            CampaignStep.update(**diff).where(CampaignStep.id == row.id).execute()
            changed = True
    if new_rows:
        insert_many(CampaignStep, new_rows).execute()
        changed = True
    if any(position >= len(steps) for position in existing):
        (CampaignStep.delete()
         .where((CampaignStep.campaign == campaign_id) & (CampaignStep.position >= len(steps)))
         .execute())
        changed = True
    return changed


def attributes_in_use(limit: int = SAMPLE_CONTACTS) -> dict[str, Any]:
    """Each attribute key of the newest ``limit`` contacts, with a value it has there.

    Bounded (one query, ``limit`` rows) rather than exact: a key only very old contacts have is
    not seen, which at worst adds a warning.
    """
    seen: dict[str, Any] = {}
    query = Contact.select(Contact.attributes).order_by(Contact.id.desc()).limit(limit)
    for contact in query:
        attributes: object = contact.attributes
        if isinstance(attributes, dict):
            for key, value in attributes.items():
                seen.setdefault(key, value)
    return seen


def sample_contact() -> dict[str, Any]:
    """A contact with every field, and the attributes in use in the database with values found
    there: what a template is checked and previewed against when no real contact is named."""
    return {"id": 0, "external_id": "sample", "email": "sample@example.com", "phone": "+15005550006",
            "name": "Sample", "timezone": "UTC", "attributes": attributes_in_use()}


def template_warnings(specs: Iterable[CampaignSpec]) -> list[str]:
    """Render every step for a sample contact; one line per template that would fail.

    The sample has every contact field and the attributes in use in the database (with values
    found there), so what fails is a name that is neither (``{{ contact.nme }}``), or an attribute
    no contact has yet. A warning, not an error: attributes may arrive after the campaign. The
    lines name file, step and field, and (as TemplateError promises) never contact data.
    """
    sample = sample_contact()
    warnings = []
    for spec in specs:
        for index, step in enumerate(spec.steps):
            # Each part separately, so a broken subject does not hide a broken body.
            for field, source in (("subject", step.subject), ("body", step.body), ("html", step.html)):
                if source is None:
                    continue
                # A subject renders as a subject: its own bound (998 characters) applies.
                job = RenderJob(contact=sample, subject=source if field == "subject" else None,
                                body=source if field == "body" else "", channel=step.channel,
                                html=source if field == "html" else None,
                                layout=step.layout_html if field == "html" else None)
                try:
                    render(job, _SAMPLE_PUBLIC_URL)
                except TemplateError as exc:
                    warnings.append(f"{spec.source}: steps[{index}].{field}: {exc.problem} "
                                    "(for a contact with every field and the attributes in use in the database)")
    return warnings
