"""Erasing a contact (GDPR, right to erasure), and the tombstone that keeps it erased.

What ``erase_contact`` does, in one transaction:

- the contact row stays (its id holds the analytics: sends, clicks, conversions stay counted) but
  every personal field goes: external id, email, phone, name, timezone, attributes, consent;
  ``erased_at`` says when;
- its sends lose their recipient, subject, body and error text (the message was about the person);
- its tracked links and unsubscribe tokens are deleted (a link's URL may carry personal data; a
  click on one answers 404);
- its open enrolments are exited (``contact erased``);
- inbound events that name it lose their payload and error text: those linked to it, and those
  whose payload mentions one of its keys as they were stored (a failed or pending event that never
  reached the contact); a pending one is then processed as an empty event;
- a tombstone is written: the SHA-256 of each key (``email:ada@example.com``...) in ``erased_key``.

The tombstone, chosen over re-creating silently: a later ``contact.upsert`` (webhook, CSV import or
the admin API) naming an erased key is refused, with a note on the event ("an erased contact is
not re-created"), a count in the import's report, or a 409 from the API; an operator who has the
person's fresh consent lifts it with the API's ``after_erasure: true``. Hashes, not the keys: the
table must not hold what was erased (an email's hash can still be matched against a guess, which
is the point: the same address is recognised).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import peewee

from db.bulk import insert_many
from db.database import database, is_postgres
from db.models import Contact, Enrolment, ErasedKey, InboundEvent, Send, TrackedLink, UnsubscribeToken, utcnow
from engine.contacts import ContactInput
from engine.enrolments import OPEN_STATUSES
from ground.send_states import EnrolmentStatus

ERASED_PAYLOAD = '{"events": []}'  # what an erased event holds: nothing left to apply
ERASED_REASON = "contact erased"
ERASED_NOTE = "names an erased contact: not re-created (engine/erasure.py)"
KEY_FIELDS = ("external_id", "email", "phone")


def key_hash(field: str, value: str) -> str:
    return hashlib.sha256(f"{field}:{value}".encode()).hexdigest()


def _hashes(contact: ContactInput | Contact) -> list[str]:
    return [key_hash(field, getattr(contact, field)) for field in KEY_FIELDS if getattr(contact, field)]


def erased_among(inputs: Sequence[ContactInput]) -> set[int]:
    """The positions of the inputs that name an erased contact's key: one query."""
    wanted = {h: i for i, contact in enumerate(inputs) for h in _hashes(contact)}
    if not wanted:
        return set()
    found = ErasedKey.select(ErasedKey.key_hash).where(ErasedKey.key_hash.in_(sorted(wanted)))
    hit = {row.key_hash for row in found}
    return {i for i, contact in enumerate(inputs) if any(h in hit for h in _hashes(contact))}


def lift_tombstones(contact: ContactInput) -> int:
    """The operator has the person's fresh consent: their keys may be used again."""
    return int(ErasedKey.delete().where(ErasedKey.key_hash.in_(_hashes(contact))).execute())


@dataclass(frozen=True)
class Erasure:
    contact_id: int
    erased_at: dt.datetime
    sends: int  # messages emptied
    events: int  # inbound events emptied
    links: int  # tracked links and unsubscribe tokens deleted
    enrolments: int  # open enrolments exited


def erase_contact(contact_id: int, now: dt.datetime | None = None) -> Erasure | None:
    """Erase one contact (idempotent: erasing again changes nothing); None when there is none."""
    contact = Contact.get_or_none(Contact.id == contact_id)
    if contact is None:
        return None
    if contact.erased_at is not None:
        return Erasure(contact.id, contact.erased_at, 0, 0, 0, 0)
    now = now or utcnow()
    with database.atomic():
        hashes = _hashes(contact)
        if hashes:
            insert_many(ErasedKey, [{"key_hash": h, "erased_at": now} for h in hashes]).on_conflict_ignore().execute()
        (Contact.update(external_id=None, email=None, phone=None, name=None, timezone=None, attributes={},
                        consent={}, erased_at=now, updated_at=now)
         .where(Contact.id == contact.id).execute())
        sends = (Send.update(recipient=None, subject=None, body=None, error=None)
                 .where(Send.contact == contact.id).execute())
        links = TrackedLink.delete().where(TrackedLink.contact == contact.id).execute()
        links += UnsubscribeToken.delete().where(UnsubscribeToken.contact == contact.id).execute()
        enrolments = (Enrolment.update(status=EnrolmentStatus.EXITED, finished_at=now, exit_reason=ERASED_REASON)
                      .where((Enrolment.contact == contact.id) & Enrolment.status.in_(OPEN_STATUSES)).execute())
        events = (InboundEvent.update(payload=ERASED_PAYLOAD, error=peewee.Case(None, [(InboundEvent.error.is_null(), None)],
                                                                                 ERASED_REASON))
                  .where(_naming(contact)).execute())
    return Erasure(contact.id, now, int(sends), int(events), int(links), int(enrolments))


def _naming(contact: Contact) -> peewee.Expression:
    """The inbound events that name the contact: linked to it, or mentioning one of its keys (an
    email in any case) in their payload. A scan of the events table, once per erasure."""
    # a position, not LIKE: an address's "_" or "%" would be a wildcard and match other people's
    position = peewee.fn.STRPOS if is_postgres() else peewee.fn.INSTR
    condition: peewee.Expression = InboundEvent.contact == contact.id
    for value in _mentions(contact):
        condition |= position(peewee.fn.LOWER(InboundEvent.payload), value.lower()) > 0
    return condition


def _mentions(contact: Contact) -> Iterable[str]:
    return [v for v in (contact.external_id, contact.email, contact.phone) if v]
