"""Contacts: validation and normalisation of the contract's fields, set-based upsert with merging,
suppressions, and the one unsubscribe operation (``unsubscribe``) every way in calls.

Normalisation: emails through email-validator (syntax only, no DNS) and lower-cased whole, so
``Ada@Example.COM`` and ``ada@example.com`` are one person; phones through phonenumbers to E.164,
numbers without a country code read in ``RETENTIOND_DEFAULT_REGION``; timezones must be IANA names.

Merge rules of ``upsert_contacts``:

1. Inputs of one batch that share any key (external id, email or phone) are merged first, in
   order: later non-empty values win, attributes and consent merge key by key.
2. A merged input matches an existing contact by external id, else by email, else by phone.
3. Matched: non-empty incoming fields overwrite, attributes and consent merge key by key.
   Unmatched: a new contact.
4. A key that already belongs to a DIFFERENT contact is not moved (it stays where it is, the
   result lists it in ``conflicts``): unique keys are never violated, and nobody's phone number
   is silently taken from them.

Cost: one SELECT for the whole batch, one INSERT per 1,000 new contacts, one UPDATE per 1,000
changed contacts — the same few statements for 10 rows or 1,000. Two processes inserting the same
new contact at once: the loser's batch meets a unique violation, rolls back and runs once more
(it then finds the winner's row and merges into it).
"""

from __future__ import annotations

import json
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import email_validator
import peewee
import phonenumbers

from db.bulk import insert_many
from db.database import database
from db.database import rows as db_rows
from db.models import Contact, Suppression, utcnow
from db.queries import bulk_update
from engine import events_out
from engine.enrolments import follow_campaigns
from ground.channels import CHANNELS
from ground.errors import RetentiondError
from ground.vocabulary import EventType, OutEventType

FIELDS = ("external_id", "email", "phone", "name", "timezone", "attributes", "consent")
KEYS = ("external_id", "email", "phone")
_INSERT_CHUNK = 1000
ATTRIBUTES_MAX_DEPTH = 8  # objects and lists inside attributes, counting attributes itself
ATTRIBUTES_MAX_BYTES = 16 * 1024  # as compact JSON: what every contact read carries along


class InvalidContact(RetentiondError):
    """A contact field that cannot be accepted; the message names the field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


def normalise_email(text: str) -> str:
    try:
        checked = email_validator.validate_email(text.strip(), check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise InvalidContact("email", f"not a valid email address ({exc})") from None
    return str(checked.normalized).lower()


def normalise_phone(text: str, default_region: str) -> str:
    try:
        number = phonenumbers.parse(text, default_region.upper())
    except phonenumbers.NumberParseException:
        raise InvalidContact("phone", "not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidContact("phone", "not a valid phone number")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def check_timezone(text: str) -> str:
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidContact("timezone", "not an IANA timezone such as Europe/Paris") from None
    return text


@dataclass(frozen=True)
class ContactInput:
    external_id: str | None = None
    email: str | None = None
    phone: str | None = None
    name: str | None = None
    timezone: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    consent: Mapping[str, bool] = field(default_factory=dict)

    def keys(self) -> list[tuple[str, str]]:
        return [(k, getattr(self, k)) for k in KEYS if getattr(self, k)]


def _text(data: Mapping[str, Any], name: str, limit: int) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidContact(name, "expected text")
    text = str(value).strip()
    if len(text) > limit:
        raise InvalidContact(name, f"longer than {limit} characters")
    _refuse_nul(name, text)
    return text or None


def _refuse_nul(name: str, text: str) -> None:
    # PostgreSQL text cannot hold U+0000 (the driver raises, the whole batch fails) and SQLite
    # would store a value nothing else reads back whole: a NUL is refused on both engines.
    if "\x00" in text:
        raise InvalidContact(name, "holds a NUL character (\\0)")


def parse_contact(data: Mapping[str, Any], default_region: str) -> ContactInput:
    """A validated, normalised contact from the contract's ``contact.upsert`` fields."""
    if not isinstance(data, Mapping):
        raise InvalidContact("data", "expected an object")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InvalidContact(unknown[0], f"unknown field (fields are {', '.join(FIELDS)})")
    email = _text(data, "email", 320)
    phone = _text(data, "phone", 40)
    timezone = _text(data, "timezone", 64)
    attributes = data.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise InvalidContact("attributes", "expected an object")
    _check_attributes(attributes)
    consent = data.get("consent") or {}
    if not isinstance(consent, Mapping):
        raise InvalidContact("consent", "expected an object of channel: true/false")
    for channel, allowed in consent.items():
        if channel not in CHANNELS:
            raise InvalidContact("consent", f"unknown channel {channel!r} (one of {', '.join(CHANNELS)})")
        if not isinstance(allowed, bool):
            raise InvalidContact("consent", f"{channel}: expected true or false")
    contact = ContactInput(
        external_id=_text(data, "external_id", 255),
        email=normalise_email(email) if email else None,
        phone=normalise_phone(phone, default_region) if phone else None,
        name=_text(data, "name", 255),
        timezone=check_timezone(timezone) if timezone else None,
        attributes=dict(attributes), consent=dict(consent))
    if not contact.keys():
        raise InvalidContact("external_id", "a contact needs an external_id, an email or a phone")
    return contact


def _check_attributes(attributes: Mapping[str, Any]) -> None:
    """Bounded depth and size: attributes are stored as JSON on the contact and read with it on
    every send, and a deep document would exhaust the recursion of every JSON encoder on the way.
    The depth walk is iterative and stops at the limit, so it costs nothing for a hostile input."""
    stack: list[tuple[Any, int]] = [(attributes, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, Mapping) else value if isinstance(value, list | tuple) else ()
        if isinstance(value, Mapping):
            for key in value:  # rendered into messages, which PostgreSQL stores as text
                if isinstance(key, str):
                    _refuse_nul("attributes", key)
        for child in children:
            if isinstance(child, str):
                _refuse_nul("attributes", child)
            if isinstance(child, Mapping | list | tuple):
                if depth + 1 > ATTRIBUTES_MAX_DEPTH:
                    raise InvalidContact("attributes", f"nested deeper than {ATTRIBUTES_MAX_DEPTH} levels")
                stack.append((child, depth + 1))
    try:
        size = len(json.dumps(attributes, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError):
        raise InvalidContact("attributes", "expected JSON values (no NaN or Infinity)") from None
    if size > ATTRIBUTES_MAX_BYTES:
        raise InvalidContact("attributes", f"larger than {ATTRIBUTES_MAX_BYTES} bytes as JSON")


def _merge(old: ContactInput, new: ContactInput) -> ContactInput:
    return ContactInput(
        **{k: getattr(new, k) or getattr(old, k) for k in ("external_id", "email", "phone", "name", "timezone")},
        attributes={**old.attributes, **new.attributes}, consent={**old.consent, **new.consent})


def _merge_batch(inputs: Sequence[ContactInput]) -> tuple[list[ContactInput], list[int]]:
    """Merge inputs that share a key, even through a chain (a shares an email with b, b a phone
    with c); return the merged inputs and, for each original input, the index of its group."""
    parent = list(range(len(inputs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[tuple[str, str], int] = {}
    for i, item in enumerate(inputs):
        for key in item.keys():
            if key in first_with:
                parent[root(i)] = root(first_with[key])
            else:
                first_with[key] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(inputs)):
        groups.setdefault(root(i), []).append(i)
    merged: list[ContactInput] = []
    index_of = [0] * len(inputs)
    for members in sorted(groups.values()):
        combined = inputs[members[0]]
        for i in members[1:]:
            combined = _merge(combined, inputs[i])
        for i in members:
            index_of[i] = len(merged)
        merged.append(combined)
    return merged, index_of


@dataclass(frozen=True)
class UpsertResult:
    contact_id: int
    created: bool
    conflicts: tuple[str, ...] = ()  # keys left out: they belong to another contact


def upsert_contacts(inputs: Sequence[ContactInput]) -> list[UpsertResult]:
    """Create or update a batch of contacts in one transaction; results in input order."""
    if not inputs:
        return []
    for attempt in (1, 2):
        try:
            with database.atomic():
                return _upsert(inputs)
        except peewee.IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def upsert_in_order(inputs: Sequence[ContactInput]) -> list[UpsertResult]:
    """Upsert inputs as if one ``upsert_contacts([input])`` after another, in a few statements.

    The inputs are cut into rounds, each the longest prefix of what is left whose inputs share no
    key and no existing contact (one SELECT shows which contacts their keys reach): inside a round
    no input can see another's effect, so one set-based write of the round is the same as writing
    its inputs in turn. Distinct contacts are one round (one SELECT, one INSERT, one UPDATE); a
    contact met again starts the next round. Results in input order; each round's contact ids
    are the ids of distinct contacts."""
    for attempt in (1, 2):
        try:
            with database.atomic():
                results: list[UpsertResult] = []
                for round_ in iter_rounds(inputs):
                    results.extend(round_)
                return results
        except peewee.IntegrityError:  # another process inserted one of them: see upsert_contacts
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def iter_rounds(inputs: Sequence[ContactInput]) -> Iterator[list[UpsertResult]]:
    """Apply ``inputs`` round by round (see ``upsert_in_order``), yielding each round's results
    once written, so that a caller can apply what follows the upserts of a round before the next
    (a contact's second upsert comes after its first one's enrolments). Call inside a transaction."""
    start = 0
    while start < len(inputs):
        existing = _existing(inputs[start:])
        holders: dict[tuple[str, str], int] = {(k, getattr(c, k)): c.id for c in existing for k in KEYS
                                               if getattr(c, k)}
        seen: set[object] = set()
        end = start
        while end < len(inputs):
            keys = inputs[end].keys()
            reach = {*keys, *(holders[k] for k in keys if k in holders)}
            if reach & seen:
                break
            seen |= reach
            end += 1
        round_ = inputs[start:end]
        reached = {holders[k] for item in round_ for k in item.keys() if k in holders}
        yield _upsert(round_, [c for c in existing if c.id in reached])
        start = end


def _upsert(inputs: Sequence[ContactInput], existing: Sequence[Contact] | None = None) -> list[UpsertResult]:
    merged, index_of = _merge_batch(inputs)
    if existing is None:
        existing = _existing(merged)
    by_key = {(k, getattr(c, k)): c for c in existing for k in KEYS if getattr(c, k)}
    now = utcnow()

    results: list[UpsertResult | None] = [None] * len(merged)
    new_rows: list[tuple[int, dict[str, Any]]] = []
    updates: list[tuple[Any, ...]] = []
    for position, item in enumerate(merged):
        match = next((by_key[k] for k in item.keys() if k in by_key), None)
        taken = tuple(k for k, v in item.keys() if (k, v) in by_key and (match is None or by_key[(k, v)].id != match.id))
        if match is None:
            # a taken key is NULL, not absent: the chunk is one INSERT and every row needs every column
            row = {k: None if k in taken else getattr(item, k) for k in ("external_id", "email", "phone", "name",
                                                                          "timezone")}
            new_rows.append((position, {**row, "attributes": dict(item.attributes), "consent": dict(item.consent),
                                        "created_at": now, "updated_at": now}))
            results[position] = UpsertResult(0, True, taken)
            continue
        values = {k: (getattr(item, k) if getattr(item, k) and k not in taken else getattr(match, k))
                  for k in ("external_id", "email", "phone", "name", "timezone")}
        attributes = {**(match.attributes or {}), **item.attributes}
        consent = {**(match.consent or {}), **item.consent}
        if (values != {k: getattr(match, k) for k in values} or attributes != (match.attributes or {})
                or consent != (match.consent or {})):
            updates.append((match.id, values["external_id"], values["email"], values["phone"], values["name"],
                            values["timezone"], _json(attributes), _json(consent), now))
        results[position] = UpsertResult(match.id, False, taken)

    for start in range(0, len(new_rows), _INSERT_CHUNK):
        chunk = new_rows[start:start + _INSERT_CHUNK]
        # RETURNING order is not promised for a multi-row INSERT: map the ids back by key
        created = {}
        for contact_id, *keys in insert_many(Contact, [row for _, row in chunk]).returning(
                Contact.id, Contact.external_id, Contact.email, Contact.phone).tuples():
            for name, value in zip(KEYS, keys, strict=True):
                if value:
                    created[(name, value)] = contact_id
        for position, row in chunk:
            previous = results[position]
            assert previous is not None
            key = next((k, row[k]) for k in KEYS if row.get(k))
            results[position] = replace(previous, contact_id=created[key])
    if updates:
        bulk_update("contact", ("external_id", "email", "phone", "name", "timezone", "attributes", "consent",
                                "updated_at"), updates, casts={"updated_at": "timestamp"})
    final = [r for r in results if r is not None]
    return [final[i] for i in index_of]


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _existing(merged: Sequence[ContactInput]) -> list[Contact]:
    clauses = []
    for key in KEYS:
        values = sorted({getattr(m, key) for m in merged if getattr(m, key)})
        if values:
            clauses.append(getattr(Contact, key).in_(values))
    if not clauses:
        return []
    condition = clauses[0]
    for clause in clauses[1:]:
        condition = condition | clause
    return list(Contact.select().where(condition))


def contact_key(key: Mapping[str, Any], default_region: str) -> tuple[str, str]:
    """The (field, normalised value) an event names its contact by: external_id, else email, else phone."""
    if key.get("external_id"):
        external_id = str(key["external_id"]).strip()
        _refuse_nul("external_id", external_id)
        return "external_id", external_id
    if key.get("email"):
        return "email", normalise_email(str(key["email"]))
    if key.get("phone"):
        return "phone", normalise_phone(str(key["phone"]), default_region)
    raise InvalidContact("external_id", "give an external_id, an email or a phone")


def find_contact(key: Mapping[str, Any], default_region: str) -> Contact | None:
    """The contact with this external_id, email or phone (normalised first), if any."""
    name, value = contact_key(key, default_region)
    return Contact.get_or_none(getattr(Contact, name) == value)


def find_contact_ids(keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The ids of the contacts with these ``contact_key`` keys (those that exist): one query."""
    clauses = [getattr(Contact, name).in_(sorted({v for k, v in keys if k == name}))
               for name in KEYS if any(k == name for k, _ in keys)]
    if not clauses:
        return {}
    condition = clauses[0]
    for clause in clauses[1:]:
        condition = condition | clause
    found: dict[tuple[str, str], int] = {}
    for contact in Contact.select(Contact.id, Contact.external_id, Contact.email, Contact.phone).where(condition):
        for name in KEYS:
            if getattr(contact, name):
                found[(name, getattr(contact, name))] = contact.id
    return found


def suppress_first(items: Iterable[tuple[int, str, str]]) -> None:
    """Suppress each (contact, channel, reason) as if in turn: the first reason for a contact and
    channel is the one kept (``suppress`` ignores a second), so only it is written; one INSERT per
    channel and reason."""
    first: dict[tuple[int, str], str] = {}
    for contact_id, channel, reason in items:
        first.setdefault((contact_id, channel), reason)
    groups: dict[tuple[str, str], list[int]] = {}
    for (contact_id, channel), reason in first.items():
        groups.setdefault((channel, reason), []).append(contact_id)
    for (channel, reason), ids in groups.items():
        suppress(ids, reason, channel)


# Suppression reasons that are not the person's own choice (events out tell them apart): a bounce,
# a spam complaint (the provider's), an operator's hand (daemon/web/api/contacts.py)
SUPPRESSED_NOT_UNSUBSCRIBED = frozenset({"bounced", "complained", "operator"})


def suppress(contact_ids: Iterable[int], reason: str, channel: str = "*") -> int:
    """Stop sending to these contacts on ``channel`` ('*': every channel). Idempotent."""
    now = utcnow()
    rows = [{"contact": cid, "channel": channel, "reason": reason, "created_at": now} for cid in sorted(set(contact_ids))]
    if not rows:
        return 0
    kind = OutEventType.CONTACT_SUPPRESSED if reason in SUPPRESSED_NOT_UNSUBSCRIBED else OutEventType.CONTACT_UNSUBSCRIBED
    if not events_out.wanted(kind):
        return int(insert_many(Suppression, rows).on_conflict_ignore().as_rowcount().execute() or 0)
    # the new suppressions only (a contact already suppressed there is not news)
    added = list(db_rows(insert_many(Suppression, rows).on_conflict_ignore().returning(Suppression.id, Suppression.contact)))
    events_out.emit(kind, [(f"u{suppression_id}", {"contact_id": contact_id, "channel": channel, "reason": reason})
                           for suppression_id, contact_id in added], now)
    return len(added)


def unsubscribe(contact_ids: Iterable[int], channel: str = "*", reason: str = "unsubscribed") -> list[str]:
    """The contacts unsubscribe from ``channel`` ('*': every channel), whichever way it came (the
    link in a message; a run of ``contact.unsubscribe`` events applies these same steps set-based,
    ``suppress_first`` then the campaigns): suppressed there, then out of every
    campaign that exits on ``contact.unsubscribe`` and into those it triggers. Idempotent. Returns
    the notes of ``follow_campaigns`` (a triggered campaign that could not take them)."""
    ids = sorted(set(contact_ids))
    suppress(ids, reason, channel)
    return follow_campaigns(EventType.CONTACT_UNSUBSCRIBE, ids, reason="unsubscribed")


def unsuppress(contact_ids: Iterable[int], channel: str = "*") -> int:
    """Lift a suppression (e.g. START after STOP). Idempotent."""
    ids = sorted(set(contact_ids))
    if not ids:
        return 0
    return int(Suppression.delete().where(Suppression.contact.in_(ids), Suppression.channel == channel).execute())

