"""Periodic jobs under leases, with their history: across any number of processes and daemons each
run happens once, never two at a time, and every run is recorded.

A due job is run by whoever takes its lease (db/leases.py). The holder renews the lease every
third of its TTL while the job runs; when the job ends, the lease is held until the job's next due
time, so the tick just run cannot run again anywhere. A holder that dies stops renewing: the lease
expires within its TTL and the next instance takes the job over. Fail safe: a job whose lease
cannot be taken (held elsewhere, or the database is away) does not run.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from db.database import db_session
from db.leases import hold_until, renew, try_acquire
from db.models import JobRun, utcnow
from ground.metrics import JOB_RUNS, LEASE_HOLDER, initialise_job_labels
from ground.outage_log import OutageLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    name: str
    interval_s: float
    run: Callable[[], int]  # returns how many items it handled
    ttl_s: float = 60.0


class JobRunner:
    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self._held_until: dict[str, dt.datetime] = {}  # job -> end of the hold after our last run
        self._outages: dict[str, OutageLog] = {}

    def _outage(self, name: str) -> OutageLog:
        """A job failing every tick (the broker away) is logged once per outage."""
        if name not in self._outages:
            self._outages[name] = OutageLog(logger, f"job {name}")
        return self._outages[name]

    def run_if_due(self, job: Job) -> int | None:
        """Run ``job`` if this instance can take its lease; the run's item count, or None."""
        initialise_job_labels(job.name)
        started = utcnow()
        with db_session():
            if not try_acquire(job.name, self.instance_id, job.ttl_s, started):
                # past our own hold, a lease we cannot take is someone else's
                if started >= self._held_until.get(job.name, started):
                    LEASE_HOLDER.labels(job.name).set(0)
                return None
            run = JobRun.create(job=job.name, instance=self.instance_id, started_at=started)
        LEASE_HOLDER.labels(job.name).set(1)
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(job, done), daemon=True, name=f"lease-{job.name}")
        renewer.start()
        items, outcome, error = 0, "ok", None
        try:
            items = int(job.run() or 0)
        except Exception as exc:  # recorded, and the next tick tries again
            outcome, error = "error", f"{type(exc).__name__}: {exc}"[:2000]
            self._outage(job.name).failed(exc, logging.ERROR)  # once per outage, not every tick
        else:
            self._outage(job.name).succeeded()
        finally:
            done.set()
            renewer.join()
            with db_session():
                (JobRun.update(finished_at=utcnow(), outcome=outcome, items=items, error=error)
                 .where(JobRun.id == run.id).execute())
                until = started + dt.timedelta(seconds=job.interval_s)
                held = hold_until(job.name, self.instance_id, until)
            self._held_until[job.name] = until
            JOB_RUNS.labels(job.name, outcome).inc()
            LEASE_HOLDER.labels(job.name).set(1 if held else 0)
        return items

    def _renew(self, job: Job, done: threading.Event) -> None:
        while not done.wait(job.ttl_s / 3):
            try:
                with db_session():
                    if not renew(job.name, self.instance_id, job.ttl_s):
                        LEASE_HOLDER.labels(job.name).set(0)
                        logger.error("job %s lost its lease while running", job.name)
                        return
            except Exception:
                logger.warning("job %s: could not renew its lease", job.name, exc_info=True)
