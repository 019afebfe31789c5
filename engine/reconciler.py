"""The reconciler: sends that stopped moving go back to the outbox, so nothing is lost.

* ``queued`` or ``retrying`` for longer than ``RECONCILE_AFTER_S``: their message was lost (the
  in-process broker at a restart, a crash between the relay's UPDATE and its publish, a purged
  queue). Back to ``planned``; the relay enqueues them again. If the old message still turns up,
  the claim makes it harmless.
* ``sending`` under a claimant that stopped beating (engine/workers.py): the worker holding them
  died (kill -9, OOM, power). Whether the provider got the call is unknown, so they are offered
  again: at least once, with the same idempotency key. A live worker's claims are never re-offered,
  however long it waits for the database: it still holds their results (in memory and in its
  journal, engine/journal.py) and writes them when it can. Claims without a claimant (made before
  claimants were recorded) keep the old rule: ``sending`` for longer than ``CLAIM_TIMEOUT_S``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from db.bulk import insert_many
from db.database import database, db_session, rows
from db.models import Decision, Send
from engine.workers import dead_claimants, forget_dead
from ground.settings import Settings


@dataclass
class ReconcileReport:
    requeued: int = 0  # queued/retrying whose message was lost
    reclaimed: int = 0  # sending whose worker died


def reconcile(settings: Settings, now: dt.datetime) -> ReconcileReport:
    report = ReconcileReport()
    stale_queue = now - dt.timedelta(seconds=settings.reconcile_after_s)
    stale_claim = now - dt.timedelta(seconds=settings.claim_timeout_s)
    with db_session(), database.atomic():
        report.requeued = (Send.update(status="planned", queued_at=None)
                           .where(Send.status.in_(("queued", "retrying")), Send.queued_at < stale_queue)
                           .execute())
        abandoned = Send.claimed_by.is_null() & (Send.claimed_at < stale_claim)
        dead = dead_claimants(now, settings.heartbeat_interval_s, settings.claim_timeout_s)
        if dead:
            abandoned = abandoned | Send.claimed_by.in_(dead)
        reclaimed = rows(Send.update(status="planned", claimed_at=None, queued_at=None)
                         .where(Send.status == "sending", abandoned)
                         .returning(Send.id, Send.contact, Send.campaign, Send.step, Send.channel))
        if reclaimed:
            insert_many(Decision, [
                {"send": r[0], "contact": r[1], "campaign": r[2], "step": r[3], "channel": r[4],
                 "outcome": "reoffered", "reason": "its worker stopped mid-send; offered again (at least once)",
                 "created_at": now} for r in reclaimed]).execute()
        report.reclaimed = len(reclaimed)
        forget_dead(now, max(settings.claim_timeout_s, 3600.0))
    return report
