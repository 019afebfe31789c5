"""A worker process: Dramatiq worker threads consuming every channel queue.

Started by the supervisor (spawned, never forked from a threaded parent). It ignores SIGINT, since
the parent orders the shutdown, and on SIGTERM stops taking messages, lets those in hand finish
within the timeout, gives the prefetched ones back to RabbitMQ, closes its connections and exits.
A message still running when the timeout ends is not acknowledged: RabbitMQ redelivers it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
import time
from typing import Any

from daemon.exit_codes import RET_OK
from daemon.logging_setup import setup_logging, setup_sentry
from ground.outage_log import OutageLog
from ground.settings import Settings

logger = logging.getLogger(__name__)


def worker_main(settings: Settings, index: int, wake: Any = None) -> int:
    """Entry point of worker process ``index``; returns its exit code. On the embedded default
    (``memory://``) the one worker process also owns the queues' other side (daemon/embedded.py):
    ``wake`` is the pipe the side server writes to after a group commit."""
    # SIGTERM is taken by the main thread when it asks for it (sigtimedwait), never by a Python
    # handler: a handler that sets a threading.Event deadlocks when it lands while the main thread
    # holds that Event's own lock — a window that GIL contention at start-up (a dozen threads
    # starting) widens enough that a worker once ignored SIGTERM for the whole shutdown timeout.
    # Blocked before any thread starts, so every thread inherits the mask and the signal waits
    # for the main thread.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    setup_logging(settings.log_level, settings.log_format)
    setup_sentry(settings.sentry_dsn)

    from dramatiq import Worker

    from actors.broker import build_broker
    from db.database import close_database, init_database
    from engine import events_out
    from ground import metrics

    init_database(settings.database_url, pool_size=settings.db_pool_size, timeout_s=settings.db_timeout_s)
    events_out.configure(settings.destinations)  # the changes this worker makes tell them
    metrics.initialise_labels()
    liveness = Liveness(settings).start()  # before the first claim: claims carry its instance id
    broker = build_broker(settings)
    embedded = None
    if settings.is_memory_broker:
        from daemon.embedded import EmbeddedDuties, requeue_lost_in_memory

        requeue_lost_in_memory()  # before any worker thread claims
    worker = Worker(broker, worker_threads=settings.threads)
    worker.start()
    if settings.is_memory_broker:
        embedded = EmbeddedDuties(settings, broker, wake).start()
    logger.info("worker %d (pid %d) started with %d threads%s", index, os.getpid(), settings.threads,
                ", the in-memory queues and the scheduler" if embedded else "")

    wait_for_stop(parent)
    started_stopping = time.monotonic()
    if embedded is not None:  # no new enqueues while the worker drains
        embedded.stop(timeout_s=max(1.0, settings.shutdown_timeout_s / 2))
    # Leave a second of the supervisor's budget for closing connections.
    left_s = settings.shutdown_timeout_s - 1 - (time.monotonic() - started_stopping)
    worker.stop(timeout=max(1000, int(left_s * 1000)))
    broker.close()
    liveness.stop()
    close_database()
    logger.info("worker %d stopped", index)
    return RET_OK


class Liveness:
    """This process's identity on its claims, its journal of unwritten results, and a heartbeat
    thread: every ``HEARTBEAT_INTERVAL_S`` it renews the process's row (engine/workers.py) and
    replays the journals of this host's dead workers (engine/journal.py), so a crashed sibling's
    results are written by whoever is alive, as soon as the database answers."""

    def __init__(self, settings: Settings) -> None:
        from engine import workers

        self.settings = settings
        self.process = workers.install(settings.journal_dir)
        self._done = threading.Event()
        self._alive_since: dt.datetime | None = None
        self._last_beat = 0.0
        self._beat_outage = OutageLog(logger, "worker heartbeat")
        self._replay_outage = OutageLog(logger, "replaying the journals of stopped workers")
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")

    def start(self) -> Liveness:
        self.tick()
        self._thread.start()
        return self

    def tick(self) -> None:
        from db.database import db_session
        from db.models import utcnow
        from engine.journal import replay_orphans
        from engine.workers import beat

        now, started = utcnow(), time.monotonic()
        # A gap in the beats (an outage, a stalled thread) starts a new run: the reconciler counts
        # a claimant dead only after another worker beat without a break for 3 intervals.
        if self._alive_since is None or started - self._last_beat > 2 * self.settings.heartbeat_interval_s:
            self._alive_since = now
        try:
            with db_session():
                beat(self.process.instance, now, self._alive_since)
        except Exception as exc:
            self._alive_since = None
            self._beat_outage.failed(exc)
            return
        self._last_beat = started
        self._beat_outage.succeeded()
        try:
            replay_orphans(self.settings.journal_dir, own=self.process.journal.path)
        except Exception as exc:  # the files stay; the next beat tries again
            self._replay_outage.failed(exc)
        else:
            self._replay_outage.succeeded()

    def _run(self) -> None:
        while not self._done.wait(self.settings.heartbeat_interval_s):
            self.tick()

    def stop(self) -> None:
        """After the worker stopped: no more beats; the row goes, and the journal if all was written."""
        from db.database import db_session
        from engine.workers import retire

        self._done.set()
        self._thread.join(timeout=self.settings.heartbeat_interval_s + 1)
        if self.process.journal.pending:
            # results left unwritten (the database is away): the next start replays the journal;
            # the row stays as the date of our last sign of life
            logger.warning("%d result(s) not yet written stay in %s for the next start",
                           self.process.journal.pending, self.process.journal.path)
        else:
            try:
                with db_session():
                    retire(self.process.instance)
            except Exception as exc:
                logger.warning("could not remove this worker's heartbeat row: %s", type(exc).__name__)
        self.process.journal.close()


def wait_for_stop(parent_pid: int, poll_s: float = 1.0) -> str:
    """Block until SIGTERM (blocked in every thread, see worker_main) or until the supervisor is
    gone (kill -9: this worker stops on its own instead of running orphaned). Returns which."""
    while True:
        if signal.sigtimedwait({signal.SIGTERM}, poll_s) is not None:
            return "SIGTERM"
        if os.getppid() != parent_pid:
            logger.error("the supervisor (pid %d) is gone: stopping this worker", parent_pid)
            return "orphaned"


def spawn_entry(settings: Settings, index: int, wake: Any = None) -> None:  # multiprocessing target
    raise SystemExit(worker_main(settings, index, wake))
