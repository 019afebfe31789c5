"""Events out: what happened, told to the team's other systems (a CRM, a warehouse) as Standard
Webhooks, through the same outbox as every message.

Each destination (RETENTIOND_DESTINATION_<NAME>_URL, _SECRET, _EVENTS) wants some event types
(ground.vocabulary.OutEventType). When one happens, in the same transaction as the change it
reports, one send per destination that wants it is written to the outbox on the ``webhook``
channel: the relay takes it to the channel's queue at the channel's rate, the webhook actor posts
it signed with that destination's secret (actors/providers/destinations.py), transient failures
retry with backoff, exhausted ones are ``failed`` sends — the dead letters, listed by
``GET /api/v1/destinations`` and re-queued with ``POST /api/v1/sends/{id}/requeue``. Nothing is
lost between the change and its event (one commit), and nothing goes twice: the send's
idempotency key is derived from the destination, the type and what happened, and is the
``webhook-id`` the receiver deduplicates on.

What is stored holds no personal data: ids, statuses, a campaign's slug, a failure's reason (not
the provider's error text, which may quote the address). The contact's keys (external id, email,
phone) and a clicked link's URL (which may carry contact data) are added when the event is sent
(``with_contacts``), so an erased contact's pending events carry nothing of them, and the send's
row never held them.

Event sends have no contact, campaign or step: no send-time check holds them back (an unsubscribe
must reach the CRM even though the contact is suppressed), no cap counts them, analytics never
see them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from db.bulk import insert_many
from db.database import rows
from db.models import Campaign, Contact, Send, TrackedLink
from ground.channels import ChannelName
from ground.send_states import SendStatus
from ground.settings import Destination
from ground.vocabulary import OutEventType

DESTINATION_PREFIX = "destination:"  # an event send's recipient: destination:<name>
KEY_PREFIX = "o."  # an event send's idempotency key

# event type -> the names of the destinations that want it; set once per process at start
_wanted: dict[str, tuple[str, ...]] = {}


def configure(destinations: Mapping[str, Destination]) -> None:
    """Which destination wants which event type (every process that changes state calls this at start)."""
    _wanted.clear()
    for kind in OutEventType:
        names = tuple(sorted(d.name for d in destinations.values() if kind in d.events))
        if names:
            _wanted[kind] = names


def wanted(kind: str) -> bool:
    return kind in _wanted


def is_event_send(idempotency_key: str) -> bool:
    return idempotency_key.startswith(KEY_PREFIX)


def destination_of(recipient: str | None) -> str | None:
    """The destination an event send goes to, from its recipient (None: not an event send)."""
    if recipient and recipient.startswith(DESTINATION_PREFIX):
        return recipient[len(DESTINATION_PREFIX):]
    return None


def _key(destination: str, kind: str, ref: str) -> str:
    # deterministic, so the same happening never makes two sends; short enough for the column
    return KEY_PREFIX + hashlib.sha256(f"{destination}|{kind}|{ref}".encode()).hexdigest()[:40]


def emit(kind: OutEventType, happenings: Sequence[tuple[str, dict[str, Any]]], now: dt.datetime) -> int:
    """Put one event send per (happening, destination that wants ``kind``) in the outbox, in the
    caller's transaction. A happening is (a reference unique for its type, its data). Returns how
    many were written (a happening already emitted is skipped)."""
    names = _wanted.get(kind)
    if not names or not happenings:
        return 0
    timestamp = now.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")
    return len(rows(insert_many(Send, [{
        "idempotency_key": _key(name, kind, ref), "channel": ChannelName.WEBHOOK, "status": SendStatus.PLANNED,
        "recipient": f"{DESTINATION_PREFIX}{name}", "subject": kind,
        "body": json.dumps({"type": kind, "timestamp": timestamp, "data": data}, separators=(",", ":"), default=str),
        "due_at": now, "created_at": now,
    } for ref, data in happenings for name in names]).on_conflict_ignore().returning(Send.id)))


def campaign_slugs(campaign_ids: Iterable[int | None]) -> dict[int, str]:
    ids = sorted({i for i in campaign_ids if i is not None})
    if not ids:
        return {}
    return dict(rows(Campaign.select(Campaign.id, Campaign.slug).where(Campaign.id.in_(ids))))


def with_contacts(sends: Sequence[Any]) -> list[Any]:
    """Event sends (any objects with ``recipient`` and ``body``, dataclasses) with the contact's
    keys added to their data as they are now (one query); other sends as they are."""
    decoded: dict[int, dict[str, Any]] = {}
    for index, s in enumerate(sends):
        if destination_of(s.recipient) is None or not is_event_send(s.idempotency_key):
            continue
        try:
            document = json.loads(s.body or "")
        except ValueError:
            continue
        if isinstance(document, dict) and isinstance(document.get("data"), dict):
            decoded[index] = document
    contact_ids = sorted({d["data"]["contact_id"] for d in decoded.values()
                          if isinstance(d["data"].get("contact_id"), int)})
    contacts = {c.id: {"id": c.id, "external_id": c.external_id, "email": c.email, "phone": c.phone}
                for c in Contact.select(Contact.id, Contact.external_id, Contact.email, Contact.phone)
                .where(Contact.id.in_(contact_ids))} if contact_ids else {}
    link_ids = sorted({d["data"]["link_id"] for d in decoded.values() if isinstance(d["data"].get("link_id"), int)})
    urls = dict(rows(TrackedLink.select(TrackedLink.id, TrackedLink.url).where(TrackedLink.id.in_(link_ids)))) \
        if link_ids else {}
    out = list(sends)
    for index, document in decoded.items():
        contact_id = document["data"].get("contact_id")
        if contact_id is not None:
            document["data"]["contact"] = contacts.get(contact_id)  # None: the contact is gone
        if "link_id" in document["data"]:
            document["data"]["url"] = urls.get(document["data"]["link_id"])  # None: erased with its contact
        out[index] = replace(sends[index], body=json.dumps(document, separators=(",", ":")))
    return out
