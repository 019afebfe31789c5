"""Erasing a contact (GDPR, right to erasure), and the tombstone that keeps it erased.

What ``erase_contact`` does, in one transaction:

- the contact row stays (its id holds the analytics: sends, clicks, conversions stay counted) but
  every personal field goes: external id, email, phone, name, timezone, attributes, consent;
  ``erased_at`` says when;
- its sends lose their recipient, subject, body, HTML or TwiML part and error text (the message was
  about the person);
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
import json
import re
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import peewee

from db.bulk import insert_many
from db.database import database, is_postgres
from db.models import Contact, Enrolment, ErasedKey, InboundEvent, Send, TrackedLink, UnsubscribeToken, utcnow
from engine.contacts import ContactInput
from engine.enrolments import OPEN_STATUSES
from ground.send_states import EnrolmentStatus

ERASED_PAYLOAD = '{"events": []}'  # what an erased event holds: nothing left to apply
ERASED_REASON = "contact erased"
ERASED_NOTE = "names an erased contact: not re-created"
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
    keys = {field: getattr(contact, field) for field in KEY_FIELDS if getattr(contact, field)}
    with database.atomic():
        # The contact's row first, locked (PostgreSQL), then its enrolments: a planning tick that
        # claimed one of them commits its send before these statements go on, so the send is
        # emptied below instead of surviving with the address and the text
        locked = Contact.select(Contact.id).where(Contact.id == contact.id)
        (locked.for_update() if is_postgres() else locked).execute()
        enrolments = (Enrolment.update(status=EnrolmentStatus.EXITED, finished_at=now, exit_reason=ERASED_REASON)
                      .where((Enrolment.contact == contact.id) & Enrolment.status.in_(OPEN_STATUSES)).execute())
        hashes = _hashes(contact)
        if hashes:
            insert_many(ErasedKey, [{"key_hash": h, "erased_at": now} for h in hashes]).on_conflict_ignore().execute()
        (Contact.update(external_id=None, email=None, phone=None, name=None, timezone=None, attributes={},
                        consent={}, erased_at=now, updated_at=now)
         .where(Contact.id == contact.id).execute())
        # its messages, and any message sent to one of its addresses (a test send to it)
        addressed = Send.contact == contact.id
        if addresses := [v for f, v in keys.items() if f in ("email", "phone")]:
            addressed |= Send.recipient.in_(addresses)
        sends = Send.update(recipient=None, subject=None, body=None, markup=None, error=None).where(addressed).execute()
        links = TrackedLink.delete().where(TrackedLink.contact == contact.id).execute()
        links += UnsubscribeToken.delete().where(UnsubscribeToken.contact == contact.id).execute()
        events = _empty_events(contact.id, keys)
    return Erasure(contact.id, now, int(sends), events, int(links), int(enrolments))


def _empty_events(contact_id: int, keys: dict[str, str]) -> int:
    """Empty the inbound events that name the contact: those linked to it, and those whose payload
    names one of its keys exactly (a failed or pending event that never reached it). Candidates are
    found in SQL by their stored text (the key as written, and as JSON escapes it), then each is
    checked in Python against its parsed values: a substring alone would also take Bob's event for
    ``ada@example.com`` when erasing ``ada@example.co``, or every event for an external id "7"."""
    position = peewee.fn.STRPOS if is_postgres() else peewee.fn.INSTR
    found = {e.id: e for e in InboundEvent.select(InboundEvent.id, InboundEvent.event_id)
             .where(InboundEvent.contact == contact_id)}
    condition: peewee.Expression | None = None
    for value in keys.values():
        once = json.dumps(value.lower())[1:-1]  # as JSON stores it (non-ASCII escaped)
        for form in {value.lower(), once, json.dumps(once)[1:-1]}:  # and a raw JSON body inside JSON
            clause = position(peewee.fn.LOWER(InboundEvent.payload), form) > 0
            condition = clause if condition is None else condition | clause
    if condition is not None:
        for event in InboundEvent.select(InboundEvent.id, InboundEvent.event_id, InboundEvent.payload).where(condition):
            if event.id not in found and _names(event.payload, keys):
                found[event.id] = event
    for event in found.values():
        # a sender's event id may spell the person too ("signup-ada@example.com"): then it goes,
        # and with it the deduplication of a redelivery of that one event
        event_id = event.event_id
        if any(value.lower() in event_id.lower() for value in keys.values()):
            event_id = "erased-" + hashlib.sha256(event_id.encode()).hexdigest()[:32]
        (InboundEvent.update(payload=ERASED_PAYLOAD, event_id=event_id,
                             error=peewee.Case(None, [(InboundEvent.error.is_null(), None)], ERASED_REASON))
         .where(InboundEvent.id == event.id).execute())
    return len(found)


def _names(payload: str, keys: dict[str, str]) -> bool:
    """Whether a stored payload holds one of the keys as a whole value (the raw body inside it too,
    JSON or a form), compared the way contact keys are: an email in any case, a phone by its digits."""
    digits = re.sub(r"\D", "", keys.get("phone", "")) or None
    for text in _strings(_parsed(payload)):
        value = text.strip()
        if value == keys.get("external_id") or value.lower() == keys.get("email"):
            return True
        if digits and len(value) < 40 and _PHONE_SHAPE.fullmatch(value):
            written = re.sub(r"\D", "", value)
            # the same number, with or without its country code (9 digits at least: a national number)
            if written == digits or (len(written) >= 9 and digits.endswith(written)):
                return True
    return False


_PHONE_SHAPE = re.compile(r"[+\d() .\-]{7,}")


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        fields = urllib.parse.parse_qs(text, keep_blank_values=True)
        return fields or text


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    """Every text in a parsed payload; a text that is itself a JSON document or a form (the raw
    body kept beside the canonical events) is opened too. Bounded in depth: stored payloads are
    small, but never trusted to be shallow."""
    if depth > 20:
        return
    if isinstance(value, str):
        yield value
        if value[:1] in "{[" or "=" in value:
            inner = _parsed(value)
            if not isinstance(inner, str):
                yield from _strings(inner, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key, depth + 1)
            yield from _strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, depth + 1)
