"""Provider results as a worker journals them (engine/journal.py), for journal and replay tests."""

from __future__ import annotations

import datetime as dt

from db.models import utcnow
from engine.outcomes import ClaimedSend, Result


def claimed(send_id: int, now: dt.datetime | None = None) -> ClaimedSend:
    """Send ``send_id`` (key ``k<id>``, an sms) as a worker holds it once claimed."""
    now = now or utcnow()
    return ClaimedSend(id=send_id, idempotency_key=f"k{send_id}", channel="sms", recipient="+15550001111",
                       subject=None, body="hello", contact_id=None, campaign_id=None, step_id=None,
                       enrolment_id=None, fallback_of_id=None, attempts=1, deferrals=0, due_at=now,
                       queued_at=now, claimed_at=now)


def sent(send_id: int) -> Result:
    """Twilio's acceptance of send ``send_id``."""
    return Result(claimed(send_id), "sent", provider="twilio", provider_message_id=f"SM{send_id}",
                  finished_at=utcnow())
