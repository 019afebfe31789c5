"""The daemon's periodic jobs, each under its lease (daemon/jobs.py), so that with any number of
daemons each run happens once:

* ``scheduling-tick`` (every ``SCHEDULER_INTERVAL_S``): plan due campaign steps, relay planned
  sends to the broker, wake the event processor if events wait (committed while the broker was away);
* ``reconciler`` (every 15 s): sends that stopped moving go back to the outbox;
* ``event-id-expiry`` (every 10 min): senders' event ids older than their retention are released;
* ``retention-cleanup`` (daily): rows past their retention deleted in bounded batches;
* ``health-check`` (every 30 s): the health levels, critical findings recorded as ops alerts.

``SchedulerThread`` runs them: in the daemon's main process with RabbitMQ, in the worker process
with the in-memory broker (daemon/embedded.py), since only that process can enqueue onto its queues.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import dramatiq

from actors.outbox import relay_planned_sends
from daemon.jobs import Job, JobRunner
from daemon.web import health_details
from db.database import db_session
from db.models import utcnow
from engine.event_ids import expire_event_ids
from engine.planner import plan_due_steps
from engine.processing import pending_count
from engine.reconciler import reconcile
from engine.retention import cleanup
from ground.outage_log import OutageLog
from ground.settings import Settings

logger = logging.getLogger(__name__)

RECONCILE_EVERY_S = 15.0
EXPIRE_IDS_EVERY_S = 600.0
CLEANUP_EVERY_S = 24 * 3600.0
HEALTH_EVERY_S = 30.0


@dataclass
class Totals:
    planned: int = 0
    relayed: int = 0
    reoffered: int = 0


class Scheduler:
    def __init__(self, settings: Settings, actors: Mapping[str, dramatiq.Actor],
                 event_actor: dramatiq.Actor | None = None, instance_id: str = "local") -> None:
        self.settings = settings
        self.actors = actors
        self.event_actor = event_actor
        self.runner = JobRunner(instance_id)
        self.totals = Totals()
        self.jobs = [
            Job("scheduling-tick", settings.scheduler_interval_s, self.schedule, ttl_s=60),
            Job("reconciler", min(RECONCILE_EVERY_S, settings.reconcile_after_s), self.reconcile, ttl_s=120),
            Job("event-id-expiry", EXPIRE_IDS_EVERY_S, self.expire_event_ids, ttl_s=600),
            Job("retention-cleanup", CLEANUP_EVERY_S, self.cleanup, ttl_s=1800),
            Job("health-check", HEALTH_EVERY_S, self.health_check, ttl_s=60),
        ]

    def tick(self) -> None:
        """Run every job that is due and whose lease this instance can take."""
        for job in self.jobs:
            self.runner.run_if_due(job)

    def schedule(self) -> int:
        # Relayed before planning and after each planned batch: planning thousands of steps takes
        # seconds, longer than a paced channel's window (actors/outbox.py) lasts, and that channel
        # would run dry meanwhile; and the first sends go out while the rest is being planned.
        passes = [relay_planned_sends(self.settings, self.actors)]
        planned = plan_due_steps(self.settings, utcnow(), after_batch=lambda: passes.append(
            relay_planned_sends(self.settings, self.actors))).planned
        relayed = sum(passes)
        self.totals.planned += planned
        self.totals.relayed += relayed
        if self.event_actor is not None:
            with db_session():
                waiting = pending_count() > 0
            if waiting:
                self.event_actor.send()
        return planned + relayed

    def reconcile(self) -> int:
        fixed = reconcile(self.settings, utcnow())
        if fixed.requeued or fixed.reclaimed:
            logger.warning("reconciler: %d lost message(s) re-offered, %d send(s) of dead workers re-offered",
                           fixed.requeued, fixed.reclaimed)
            self.totals.reoffered += fixed.requeued + fixed.reclaimed
            self.totals.relayed += relay_planned_sends(self.settings, self.actors)
        return fixed.requeued + fixed.reclaimed

    def health_check(self) -> int:
        """Record critical findings as ops alerts even when nobody polls /health/details."""
        report = health_details.details(self.settings)
        return sum(1 for c in report["components"].values() if c["status"] != "healthy")

    def cleanup(self) -> int:
        return sum(count for _, count in cleanup(self.settings, utcnow()))

    def expire_event_ids(self) -> int:
        return expire_event_ids(self.settings, utcnow())


class SchedulerThread:
    """Runs the scheduler's jobs that are due, several times per interval (so a job another
    instance gave up is taken over quickly), in a thread, until stopped. A failing tick (the
    database or broker away) is logged once per outage; the rows stay, the next tick tries again."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.every_s = min(scheduler.settings.scheduler_interval_s / 4, 0.25)
        self._stop = threading.Event()
        # A tick every 250 ms: failures logged once per outage.
        self._outage = OutageLog(logger, "scheduler tick")
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> SchedulerThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.scheduler.tick()
            except Exception as exc:
                self._outage.failed(exc, logging.ERROR)
            else:
                self._outage.succeeded()
            self._stop.wait(max(0.0, self.every_s - (time.monotonic() - started)))

    def request_stop(self) -> None:
        """No tick starts after this (the one under way goes on)."""
        self._stop.set()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def stop(self, timeout_s: float) -> None:
        """No tick starts after this; waits up to ``timeout_s`` for the one under way."""
        self.request_stop()
        self.join(timeout_s)
