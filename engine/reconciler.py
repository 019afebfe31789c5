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

from db.database import database, db_session
from engine import sends
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
        report.requeued = sends.requeue_lost(stale_queue)
        dead = dead_claimants(now, settings.heartbeat_interval_s, settings.claim_timeout_s)
        report.reclaimed = sends.reoffer(dead, stale_claim, now)
        forget_dead(now, max(settings.claim_timeout_s, 3600.0))
    return report
