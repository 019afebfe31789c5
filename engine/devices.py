"""A contact's push devices: the addresses a push send goes to, kept in the contact's attributes
(set by the team's app through ``contact.upsert``), and their removal when the push service says
one is gone.

* ``fcm_tokens``: Firebase Cloud Messaging registration tokens (Android, and iOS through FCM);
* ``apns_tokens``: Apple device tokens, for teams sending to APNs directly;
* ``ntfy_topic``: a secret topic on the team's own ntfy-style gateway.

Each is a list of text (a single text is read as a list of one). A token the service reports
unregistered (FCM ``UNREGISTERED``, APNs 410) is removed from the contact, with a row in the
decision log, so the next send does not try it again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from db.bulk import insert_many
from db.database import database, is_postgres
from db.models import Contact, Decision
from ground.send_states import Decided

# platform -> the contact attribute holding its addresses
ATTRIBUTES: Mapping[str, str] = {"fcm": "fcm_tokens", "apns": "apns_tokens", "ntfy": "ntfy_topic"}
MAX_DEVICES = 20  # per platform and contact: a send fans out to each, so the list is bounded
MAX_TOKEN_CHARS = 4096


def _addresses(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    found: list[str] = []
    for item in items:
        token = item.strip() if isinstance(item, str) else ""
        if token and len(token) <= MAX_TOKEN_CHARS and token not in found:
            found.append(token)
    return tuple(found[:MAX_DEVICES])


def from_attributes(attributes: object) -> dict[str, tuple[str, ...]]:
    """The devices in one contact's attributes, by platform (platforms without any are absent)."""
    if not isinstance(attributes, dict):
        return {}
    found = {platform: _addresses(attributes.get(name)) for platform, name in ATTRIBUTES.items()}
    return {platform: addresses for platform, addresses in found.items() if addresses}


def devices_of(contact_ids: Iterable[int]) -> dict[int, dict[str, tuple[str, ...]]]:
    """Each contact's devices (one query)."""
    ids = sorted(set(contact_ids))
    if not ids:
        return {}
    return {c.id: from_attributes(c.attributes)
            for c in Contact.select(Contact.id, Contact.attributes).where(Contact.id.in_(ids))}


def remove(gone: Sequence[tuple[int, int | None, str, tuple[str, ...]]], now: dt.datetime) -> int:
    """Remove gone device addresses: ``gone`` holds (contact id, send id, channel, addresses).
    Each contact's attributes are read and written back in one transaction (locked on
    PostgreSQL, so a concurrent upsert's attributes are not overwritten with stale ones); a
    decision per send names how many went, never the tokens. Returns how many were removed."""
    by_contact: dict[int, set[str]] = {}
    for contact_id, _, _, addresses in gone:
        by_contact.setdefault(contact_id, set()).update(addresses)
    if not by_contact:
        return 0
    removed = 0
    with database.atomic():
        query = Contact.select(Contact.id, Contact.attributes).where(Contact.id.in_(sorted(by_contact)))
        if is_postgres():
            query = query.for_update()
        for contact in query:
            attributes: dict[str, Any] = dict(contact.attributes) if isinstance(contact.attributes, dict) else {}
            changed = False
            for name in ATTRIBUTES.values():
                value = attributes.get(name)
                if isinstance(value, list):
                    kept = [v for v in value if not (isinstance(v, str) and v.strip() in by_contact[contact.id])]
                    removed += len(value) - len(kept)
                    if len(kept) != len(value):
                        attributes[name], changed = kept, True
                elif isinstance(value, str) and value.strip() in by_contact[contact.id]:
                    del attributes[name]
                    removed, changed = removed + 1, True
            if changed:
                Contact.update(attributes=attributes, updated_at=now).where(Contact.id == contact.id).execute()
        insert_many(Decision, [{
            "send": send_id, "contact": contact_id, "channel": channel, "outcome": Decided.DEVICE_REMOVED,
            "reason": f"{len(addresses)} device address(es) gone (unregistered at the push service): removed",
            "created_at": now} for contact_id, send_id, channel, addresses in gone]).execute()
    return removed
