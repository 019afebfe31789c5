"""``/api/v1/campaigns/{slug}/steps/{position}/preview`` and ``.../test-send``: a step rendered for
a contact (or the sample contact) without sending, and sent to an address through the channel's
real provider, marked as a test."""

from __future__ import annotations

from pydantic import Field

from actors.test_send import send_test
from daemon.web.api.campaigns import SLUG_PATTERN, find_campaign
from daemon.web.api.problems import Problem
from daemon.web.api.registry import API
from daemon.web.api.types import BodyIn, Out, PathIn
from db.database import db_session
from db.models import Campaign, CampaignStep, Contact
from engine.contacts import InvalidContact
from engine.preview import NoSuchStep, Preview, preview, step_of
from engine.templates import TemplateError
from ground.settings import Settings


class StepPath(PathIn):
    slug: str = Field(pattern=SLUG_PATTERN, max_length=100)
    position: int = Field(ge=0, le=10_000, description="the step's position, from 0")


class PreviewIn(BodyIn):
    contact_id: int | None = Field(None, ge=1, le=2**63 - 1, description="absent: the sample contact")


class TestSendIn(BodyIn):
    to: str = Field(min_length=1, max_length=320, description="the address on the step's channel: an email, a phone...")
    contact_id: int | None = Field(None, ge=1, le=2**63 - 1,
                                   description="render for this contact (absent: the sample contact)")


class LinkOut(Out):
    url: str = Field(description="where the link leads")
    tracked: str = Field(description="the tracked URL in the body (a preview's answers 404: it is saved nowhere)")


class PreviewOut(Out):
    channel: str
    recipient: str | None
    subject: str | None
    body: str = Field(description="the text: an email's text part (made from its HTML when the step gives none)")
    html: str | None = Field(default=None, description="an email's HTML part, in its layout, CSS inlined")
    links: list[LinkOut]


class TestSendOut(Out):
    send_id: int = Field(description="the test send's row (GET /api/v1/sends), never counted in analytics")
    status: str = Field(description="sent, or failed with the provider's error")
    provider: str
    provider_message_id: str | None
    error: str | None
    message: PreviewOut


def _preview_out(p: Preview) -> PreviewOut:
    return PreviewOut(channel=p.channel, recipient=p.recipient, subject=p.subject, body=p.body, html=p.html,
                      links=[LinkOut(url=url, tracked=tracked) for url, tracked in p.links])


def _step_and_contact(path: StepPath, contact_id: int | None) -> tuple[Campaign, CampaignStep, Contact | None]:
    campaign = find_campaign(path.slug)
    try:
        step = step_of(campaign, path.position)
    except NoSuchStep as exc:
        raise Problem(404, str(exc)) from None
    contact = None
    if contact_id is not None:
        contact = Contact.get_or_none(Contact.id == contact_id)
        if contact is None:
            raise Problem(404, f"no contact {contact_id}")
        if contact.erased_at is not None:
            raise Problem(409, f"contact {contact_id} is erased: nothing is rendered for it")
    return campaign, step, contact


def _template_problem(exc: TemplateError) -> Problem:
    return Problem(422, f"the step does not render: {exc}", errors=[{"field": exc.field, "message": exc.problem}])


@API.post("/campaigns/{slug}/steps/{position}/preview", tag="campaigns", errors=(404, 409, 422))
def preview_step(path: StepPath, body: PreviewIn, settings: Settings) -> PreviewOut:
    """The step rendered for a contact (or the sample contact: every field, and the attributes in
    use), without sending or saving anything; a template error is a 422 naming the field."""
    _, step, contact = _step_and_contact(path, body.contact_id)
    try:
        return _preview_out(preview(step, contact, settings.public_url))
    except TemplateError as exc:
        raise _template_problem(exc) from None


@API.post("/campaigns/{slug}/steps/{position}/test-send", tag="campaigns", errors=(404, 409, 422), session=False)
def test_send_step(path: StepPath, body: TestSendIn, settings: Settings) -> TestSendOut:
    """Send the step to ``to`` through the channel's real provider, at once: no cap, no quiet
    hours, not counted in analytics. A provider's refusal is the answer's ``error`` (status
    ``failed``), not an HTTP error; a template error is a 422 and nothing is sent."""
    with db_session():  # not around the provider's call: send_test opens its own
        campaign, step, contact = _step_and_contact(path, body.contact_id)
    try:
        sent = send_test(settings, campaign, step, body.to, contact)
    except TemplateError as exc:
        raise _template_problem(exc) from None
    except InvalidContact as exc:
        raise Problem(400, f"to: {exc}") from None
    return TestSendOut(send_id=sent.send_id, status="failed" if sent.error else "sent", provider=sent.provider,
                       provider_message_id=sent.provider_message_id, error=sent.error,
                       message=_preview_out(sent.preview))
