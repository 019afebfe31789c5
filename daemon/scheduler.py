"""The scheduler's tick: plan due campaign steps, relay planned sends to the broker, and now and
then reconcile sends that stopped moving. Runs in the daemon's main process, in a thread (the
database calls block), once per ``SCHEDULER_INTERVAL_S``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import dramatiq

from daemon.config import Settings
from daemon.outbox import relay_planned_sends
from db.database import db_session
from db.models import utcnow
from engine.event_ids import expire_event_ids
from engine.planner import plan_due_steps
from engine.processing import pending_count
from engine.reconciler import reconcile

logger = logging.getLogger(__name__)

RECONCILE_EVERY_S = 15.0
EXPIRE_IDS_EVERY_S = 600.0


@dataclass
class TickReport:
    planned: int = 0
    relayed: int = 0
    requeued: int = 0
    reclaimed: int = 0


class Scheduler:
    """One tick at a time, from the daemon's main process."""

    def __init__(self, settings: Settings, actors: Mapping[str, dramatiq.Actor],
                 event_actor: dramatiq.Actor | None = None) -> None:
        self.settings = settings
        self.actors = actors
        self.event_actor = event_actor
        self._last_reconcile = 0.0
        self._last_expiry = 0.0
        self.totals = TickReport()

    def tick(self) -> TickReport:
        report = TickReport()
        plan = plan_due_steps(self.settings, utcnow())
        report.planned = plan.planned
        report.relayed = relay_planned_sends(self.settings, self.actors)
        if self.event_actor is not None and self._events_waiting():
            # events committed while the broker was away (or whose wake-up was lost)
            self.event_actor.send()
        if time.monotonic() - self._last_reconcile >= min(RECONCILE_EVERY_S, self.settings.reconcile_after_s):
            self._last_reconcile = time.monotonic()
            fixed = reconcile(self.settings, utcnow())
            report.requeued, report.reclaimed = fixed.requeued, fixed.reclaimed
            if fixed.requeued or fixed.reclaimed:
                logger.warning("reconciler: %d lost message(s) re-offered, %d send(s) of dead workers re-offered",
                               fixed.requeued, fixed.reclaimed)
                report.relayed += relay_planned_sends(self.settings, self.actors)
        if time.monotonic() - self._last_expiry >= EXPIRE_IDS_EVERY_S:
            self._last_expiry = time.monotonic()
            expire_event_ids(self.settings, utcnow())
        for name in ("planned", "relayed", "requeued", "reclaimed"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(report, name))
        return report

    @staticmethod
    def _events_waiting() -> bool:
        with db_session():
            return pending_count() > 0
