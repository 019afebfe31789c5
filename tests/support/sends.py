"""Send rows planted the way the planner writes them, and what became of them: the status counts
in the database and the idempotency keys a daemon's console provider printed."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from db.models import Send
from ops.harness.daemon import DaemonProcess

CONSOLE_LINE = re.compile(r"^--- console (\w+) send=(\d+) key=(\S+) to=", re.M)


def plan(key: str, channel: str = "sms", recipient: str = "+15550001111", body: str = "hi") -> Send:
    """One planned send, due now."""
    return Send.create(idempotency_key=key, channel=channel, recipient=recipient, body=body)


def plan_sends(count: int, channel: str = "sms", prefix: str = "s") -> list[int]:
    """``count`` planned sends keyed ``<prefix><i>``, inserted 500 at a time; their ids."""
    rows = [{"idempotency_key": f"{prefix}{i}", "channel": channel, "recipient": f"+1555000{i:04d}",
             "body": f"message {i}"} for i in range(count)]
    ids = []
    for start in range(0, len(rows), 500):
        ids += [r.id for r in Send.insert_many(rows[start:start + 500]).returning(Send.id).execute()]
    return ids


def enrolled_send(channel: str = "sms", fallback: str | None = None, **contact_fields: object) -> tuple[Any, Any]:
    """A contact enrolled in a one-step campaign (with an optional fallback channel) and the planned
    send of that step: ``(send, enrolment)``."""
    from db.models import Campaign, CampaignStep, Contact, Enrolment

    campaign = Campaign.create(slug=f"c-{channel}-{fallback}", name="C")
    step = CampaignStep.create(campaign=campaign.id, position=0, channel=channel, body="hello",
                               subject="Hi" if channel == "email" or fallback == "email" else None,
                               fallback_channel=fallback)
    contact = Contact.create(**{"phone": "+12015550100", "email": "ada@example.com", **contact_fields})
    enrolment = Enrolment.create(contact=contact.id, campaign=campaign.id, status="waiting", next_position=0)
    address = contact.phone if channel in ("sms", "call") else contact.email
    send = Send.create(idempotency_key=f"e{enrolment.id}.0", channel=channel, contact=contact.id,
                       campaign=campaign.id, step=step.id, enrolment=enrolment.id, recipient=address, body="hello")
    return send, enrolment


def status_counts() -> Counter:
    """Sends per status, as the database holds them."""
    return Counter(s.status for s in Send.select(Send.status))


def console_keys(*daemons: DaemonProcess) -> Counter:
    """How many times each idempotency key went out through the console provider of ``daemons``."""
    return Counter(m.group(3) for d in daemons for m in CONSOLE_LINE.finditer(d.stdout()))
