"""``/api/v1/contacts``: find, search, upsert, suppress and unsuppress, erase (GDPR), and the
decision log."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from daemon.web.api.campaigns import find_campaign
from daemon.web.api.problems import Problem
from daemon.web.api.registry import API
from daemon.web.api.types import BodyIn, Out, Page, PageQuery, PathIn, QueryIn, UtcTime, page_of
from db.models import Contact, Decision, Suppression
from engine.contacts import InvalidContact, contact_key, suppress, unsuppress
from engine.enrolments import CampaignError
from engine.erasure import erase_contact
from engine.history import contact_history
from engine.manual import ErasedContact, upsert_contact
from ground.channels import ChannelName
from ground.settings import Settings

SUPPRESSION_REASON = "operator"  # a suppression added by hand through the API


class SuppressionOut(Out):
    channel: str = Field(description="a channel, or * for every channel")
    reason: str
    created_at: UtcTime


class ContactOut(Out):
    id: int
    external_id: str | None
    email: str | None
    phone: str | None
    name: str | None
    timezone: str | None
    attributes: dict[str, Any]
    consent: dict[str, bool]
    suppressions: list[SuppressionOut]
    created_at: UtcTime
    updated_at: UtcTime
    erased_at: UtcTime | None = Field(description="set once the contact is erased: every personal field is gone")


class ContactPath(PathIn):
    contact_id: int = Field(ge=1, le=2**63 - 1)


class ContactSearch(PageQuery):
    external_id: str | None = Field(None, min_length=1, max_length=255)
    email: str | None = Field(None, min_length=1, max_length=320)
    phone: str | None = Field(None, min_length=1, max_length=40)
    q: str | None = Field(None, min_length=1, max_length=100,
                          description="the start of an email, a name or an external id")


class ContactUpsertIn(BodyIn):
    """The fields of a ``contact.upsert`` event, with the same rules."""

    external_id: str | int | None = None
    email: str | None = None
    phone: str | int | None = None
    name: str | None = None
    timezone: str | None = None
    attributes: dict[str, Any] | None = None
    consent: dict[str, bool] | None = None
    campaign: str | None = Field(None, description="the slug of a campaign to enrol the contact in")
    after_erasure: bool = Field(False, description="the person was erased and has given fresh consent: "
                                                   "lift the tombstone of these keys (else 409)")


class UpsertOut(Out):
    contact: ContactOut
    created: bool
    conflicts: list[str] = Field(description="keys left out: they belong to another contact")
    notes: list[str]


class SuppressIn(BodyIn):
    channel: ChannelName | None = Field(None, description="a channel; absent: every channel")


class SuppressionPath(PathIn):
    contact_id: int = Field(ge=1, le=2**63 - 1)
    channel: str = Field(description="a channel, or * for every channel", pattern=r"^(\*|[a-z]+)$", max_length=16)


class ErasureOut(Out):
    contact_id: int
    erased_at: UtcTime
    sends: int = Field(description="messages emptied (recipient, subject, body, error)")
    events: int = Field(description="inbound events emptied (payload, error)")
    links: int = Field(description="tracked links and unsubscribe tokens deleted")
    enrolments: int = Field(description="open enrolments exited")


class DecisionOut(Out):
    id: int
    send_id: int | None
    campaign_id: int | None
    channel: str | None
    outcome: str
    reason: str | None
    until: UtcTime | None
    created_at: UtcTime


class HistoryQuery(QueryIn):
    external_id: str | None = Field(None, min_length=1, max_length=255)
    email: str | None = Field(None, min_length=1, max_length=320)
    phone: str | None = Field(None, min_length=1, max_length=40)


class HistoryOut(Out):
    contact: dict[str, Any]
    decisions: list[dict[str, Any]]
    sends: list[dict[str, Any]]


def contacts_out(contacts: list[Contact]) -> list[ContactOut]:
    """The contacts with their suppressions: one query for the suppressions of all of them."""
    suppressions: dict[int, list[SuppressionOut]] = {c.id: [] for c in contacts}
    if contacts:
        for row in (Suppression.select().where(Suppression.contact.in_(list(suppressions)))
                    .order_by(Suppression.id)):
            suppressions[row.contact_id].append(SuppressionOut.model_validate(row))
    return [ContactOut.model_validate({**c.__data__, "attributes": c.attributes or {}, "consent": c.consent or {},
                                       "suppressions": suppressions[c.id]}) for c in contacts]


def contact_out(contact: Contact) -> ContactOut:
    return contacts_out([contact])[0]


def _contact(contact_id: int) -> Contact:
    contact = Contact.get_or_none(Contact.id == contact_id)
    if contact is None:
        raise Problem(404, f"no contact {contact_id}")
    return contact


def _bad_contact(exc: InvalidContact) -> Problem:
    return Problem(400, str(exc))


@API.get("/contacts", tag="contacts")
def search_contacts(query: ContactSearch, settings: Settings) -> Page[ContactOut]:
    """Contacts by external id, email or phone (normalised as events are), or whose email, name or
    external id starts with ``q``; all of them without a filter."""
    select = Contact.select()
    try:
        for name in ("external_id", "email", "phone"):
            value = getattr(query, name)
            if value is not None:
                field, normalised = contact_key({name: value}, settings.default_region)
                select = select.where(getattr(Contact, field) == normalised)
    except InvalidContact as exc:
        raise _bad_contact(exc) from None
    if query.q is not None:
        q = query.q.strip()
        # the start of an address is no address to normalise: stored addresses are lower case
        select = select.where(Contact.email.startswith(q.lower()) | Contact.name.startswith(q)
                              | Contact.external_id.startswith(q))
    found, cursor = page_of(select, Contact.id, query)
    return Page[ContactOut](items=contacts_out(found), next_cursor=cursor)


@API.get("/contacts/history", tag="contacts", errors=(404,))
def contacts_history(query: HistoryQuery, settings: Settings) -> HistoryOut:
    """A contact's sends and the decision log: why it did or did not get each message."""
    key = {k: v for k, v in query.model_dump().items() if v}
    if not key:
        raise Problem(400, "give external_id, email or phone")
    try:
        field, value = contact_key(key, settings.default_region)
    except InvalidContact as exc:
        raise _bad_contact(exc) from None
    contact = Contact.get_or_none(getattr(Contact, field) == value)
    if contact is None:
        raise Problem(404, "no such contact")
    return HistoryOut.model_validate(contact_history(contact))


@API.get("/contacts/{contact_id}", tag="contacts")
def get_contact(path: ContactPath) -> ContactOut:
    """One contact, with its suppressions."""
    return contact_out(_contact(path.contact_id))


@API.post("/contacts", tag="contacts", errors=(404, 409))
def upsert(body: ContactUpsertIn, settings: Settings) -> UpsertOut:
    """Create or update a contact by its keys, exactly as a ``contact.upsert`` event does, and
    enrol it in ``campaign`` when given."""
    data = body.model_dump(exclude={"campaign", "after_erasure"}, exclude_none=True)
    if body.campaign is not None:
        find_campaign(body.campaign)  # 404 for an unknown one; a known one that takes no one is 409
    try:
        done = upsert_contact(settings, data, body.campaign, after_erasure=body.after_erasure)
    except InvalidContact as exc:
        raise _bad_contact(exc) from None
    except ErasedContact as exc:
        raise Problem(409, str(exc)) from None
    except CampaignError as exc:
        raise Problem(409, str(exc)) from None
    return UpsertOut(contact=contact_out(_contact(done.contact_id)), created=done.created,
                     conflicts=list(done.conflicts), notes=list(done.notes))


@API.post("/contacts/{contact_id}/erase", tag="contacts")
def erase(path: ContactPath) -> ErasureOut:
    """Erase the contact (GDPR): every personal field, its messages' text, its links, the payloads
    of the events naming it; the row and its counts stay for analytics (an action, not a DELETE:
    the contact's id still answers, with ``erased_at``), and a tombstone of its keys' hashes
    refuses a later upsert naming them. Idempotent."""
    done = erase_contact(path.contact_id)
    if done is None:
        raise Problem(404, f"no contact {path.contact_id}")
    return ErasureOut.model_validate(done)


@API.post("/contacts/{contact_id}/suppressions", tag="contacts")
def suppress_contact(path: ContactPath, body: SuppressIn) -> ContactOut:
    """Stop sending to the contact on a channel (or every channel). Idempotent."""
    contact = _contact(path.contact_id)
    suppress([contact.id], SUPPRESSION_REASON, body.channel.value if body.channel else "*")
    return contact_out(contact)


@API.delete("/contacts/{contact_id}/suppressions/{channel}", tag="contacts")
def unsuppress_contact(path: SuppressionPath) -> ContactOut:
    """Lift the contact's suppression on a channel (``*``: the one for every channel). Idempotent."""
    contact = _contact(path.contact_id)
    if path.channel != "*" and path.channel not in set(ChannelName):
        raise Problem(400, f"channel: unknown channel {path.channel!r} (one of *, {', '.join(ChannelName)})")
    unsuppress([contact.id], path.channel)
    return contact_out(contact)


@API.get("/contacts/{contact_id}/decisions", tag="contacts")
def contact_decisions(path: ContactPath, query: PageQuery) -> Page[DecisionOut]:
    """The contact's decision log, newest first: what happened to each planned send, and why."""
    contact = _contact(path.contact_id)
    found, cursor = page_of(Decision.select().where(Decision.contact == contact.id), Decision.id, query,
                            newest_first=True)
    return Page[DecisionOut](items=[DecisionOut.model_validate(d) for d in found], next_cursor=cursor)
