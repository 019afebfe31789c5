"""A contact's history: every planned send and every decision about it, newest first.

Answers "why did / didn't this person get that message?" for `retentiond stats --external-id ID`
(or `--email`, `--phone`) and the admin API.
"""

from __future__ import annotations

from typing import Any

from db.models import Campaign, Contact, Decision, Send


def contact_history(contact: Contact, limit: int = 200) -> dict[str, Any]:
    campaigns: dict[int | None, str] = {c.id: c.slug for c in Campaign.select(Campaign.id, Campaign.slug)}
    decisions = (Decision.select().where(Decision.contact == contact.id)
                 .order_by(Decision.created_at.desc(), Decision.id.desc()).limit(limit))
    sends = (Send.select(Send.id, Send.channel, Send.status, Send.reason, Send.campaign, Send.created_at,
                         Send.finished_at, Send.attempts, Send.deferrals, Send.due_at)
             .where(Send.contact == contact.id).order_by(Send.id.desc()).limit(limit))
    return {
        "contact": {"id": contact.id, "external_id": contact.external_id, "consent": contact.consent},
        "decisions": [{"at": d.created_at.isoformat(), "send": d.send_id, "channel": d.channel,
                       "campaign": campaigns.get(d.campaign_id), "outcome": d.outcome, "reason": d.reason,
                       "until": d.until.isoformat() if d.until else None} for d in decisions],
        "sends": [{"id": s.id, "channel": s.channel, "status": s.status, "reason": s.reason,
                   "campaign": campaigns.get(s.campaign_id), "attempts": s.attempts, "deferrals": s.deferrals,
                   "due_at": s.due_at.isoformat() if s.due_at else None,
                   "finished_at": s.finished_at.isoformat() if s.finished_at else None} for s in sends],
    }
