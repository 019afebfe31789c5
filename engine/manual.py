"""What an operator does by hand through the admin API: the same rules as the events.

An upsert is a ``contact.upsert`` applied at once (validation and normalisation of
``parse_contact``, the merge of ``upsert_contacts``, the campaigns it triggers or exits, the
enrolment it names); a failed inbound event can be replayed (set back to pending, for the event
processor to apply in order with the rest, once the cause is mended). An unmappable event is not
replayed: its payload has no meaning for us, and replaying it would find none again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from db.database import database
from db.models import Campaign, Contact, Enrolment, InboundEvent, utcnow
from engine.contacts import parse_contact, upsert_contacts
from engine.enrolments import CampaignRules, enrol, exit_campaign
from engine.erasure import erased_among, lift_tombstones
from engine.planner import plan_contacts
from ground.settings import Settings
from ground.vocabulary import EventType, InboundStatus


@dataclass(frozen=True)
class ManualUpsert:
    contact_id: int
    created: bool
    conflicts: tuple[str, ...]  # keys left out: they belong to another contact
    notes: tuple[str, ...]  # what the campaigns said (a triggered campaign with no steps...)


class ErasedContact(ValueError):
    """The upsert names an erased contact's key (engine/erasure.py)."""


def upsert_contact(settings: Settings, data: Mapping[str, Any], campaign: str | None,
                   after_erasure: bool = False) -> ManualUpsert:
    """One ``contact.upsert``: raises ``InvalidContact`` for bad fields, ``CampaignError`` for a
    campaign that cannot take the contact, ``ErasedContact`` for an erased contact's key unless
    ``after_erasure`` (the operator has the person's fresh consent: the tombstone is lifted); then
    nothing is written."""
    contact = parse_contact(data, settings.default_region)
    now = utcnow()
    with database.atomic():
        if erased_among([contact]):
            if not after_erasure:
                raise ErasedContact("a contact with one of these keys was erased; it is not re-created unless "
                                    "after_erasure is true (the person's fresh consent)")
            lift_tombstones(contact)
        (result,) = upsert_contacts([contact])
        notes = CampaignRules.load().follow(EventType.CONTACT_UPSERT, [result.contact_id], now=now)
        if campaign:
            enrol([result.contact_id], campaign, now=now)
    # committed: its first step is planned now, as the event processor does for a lead
    plan_contacts(settings, [result.contact_id], now)
    return ManualUpsert(result.contact_id, result.created, result.conflicts, tuple(notes))


def replay_event(event_id: int) -> InboundEvent | None:
    """A failed event goes back to ``pending``; returns it, or None when there is no such event.
    Raises ``ValueError`` for one in another status (a processed event is not re-applied: that would
    count a conversion twice)."""
    event = InboundEvent.get_or_none(InboundEvent.id == event_id)
    if event is None:
        return None
    if event.status != InboundStatus.FAILED:
        raise ValueError(f"event {event_id} is {event.status}; only a failed event is replayed")
    (InboundEvent.update(status=InboundStatus.PENDING, processed_at=None, error=None)
     .where((InboundEvent.id == event_id) & (InboundEvent.status == InboundStatus.FAILED)).execute())
    return InboundEvent.get_by_id(event_id)


UNENROLLED_REASON = "unenrolled by an operator"


def enrol_contact(settings: Settings, contact_id: int, campaign: str) -> Enrolment | None:
    """Enrol one contact (``CampaignError`` when the campaign cannot take it, ``ErasedContact`` for
    an erased one); a contact already enrolled, even finished, is left as it is. Returns its
    enrolment, None for no such contact."""
    contact = Contact.get_or_none(Contact.id == contact_id)
    if contact is None:
        return None
    if contact.erased_at is not None:
        raise ErasedContact(f"contact {contact_id} is erased: it takes no enrolment")
    now = utcnow()
    enrol([contact_id], campaign, now=now)
    plan_contacts(settings, [contact_id], now)  # a first step without delay goes now, as for a lead
    return (Enrolment.select().join(Campaign)
            .where((Enrolment.contact == contact_id) & (Campaign.slug == campaign)).get())


def unenrol_contact(contact_id: int, campaign_id: int) -> Enrolment | None:
    """End the contact's open enrolment in the campaign (a finished one stays as it is); None when
    the contact was never enrolled there."""
    exit_campaign([contact_id], campaign_id, UNENROLLED_REASON, utcnow())
    return Enrolment.get_or_none((Enrolment.contact == contact_id) & (Enrolment.campaign == campaign_id))
