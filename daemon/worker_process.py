"""A worker process: Dramatiq worker threads consuming every channel queue.

Started by the supervisor (spawned, never forked from a threaded parent). It ignores SIGINT, since
the parent orders the shutdown, and on SIGTERM stops taking messages, lets those in hand finish
within the timeout, gives the prefetched ones back to RabbitMQ, closes its connections and exits.
A message still running when the timeout ends is not acknowledged: RabbitMQ redelivers it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from daemon.config import Settings
from daemon.exit_codes import RET_OK
from daemon.logging_setup import setup_logging, setup_sentry

logger = logging.getLogger(__name__)


def worker_main(settings: Settings, index: int) -> int:
    """Entry point of worker process ``index``; returns its exit code."""
    setup_logging(settings.log_level, settings.log_format)
    setup_sentry(settings.sentry_dsn)
    stopping = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    threading.Thread(target=_watch_parent, args=(os.getppid(), stopping), daemon=True, name="parent-watch").start()

    from dramatiq import Worker

    from actors.broker import build_broker
    from daemon import metrics
    from db.database import close_database, init_database

    init_database(settings.database_url, pool_size=settings.db_pool_size, timeout_s=settings.db_timeout_s)
    metrics.initialise_labels()
    broker = build_broker(settings)
    worker = Worker(broker, worker_threads=settings.threads)
    worker.start()
    logger.info("worker %d (pid %d) started with %d threads", index, os.getpid(), settings.threads)

    stopping.wait()
    # Leave a second of the supervisor's budget for closing connections.
    worker.stop(timeout=max(1000, int((settings.shutdown_timeout_s - 1) * 1000)))
    broker.close()
    close_database()
    logger.info("worker %d stopped", index)
    return RET_OK


def _watch_parent(parent_pid: int, stopping: threading.Event) -> None:
    """A worker whose supervisor died (kill -9) stops on its own instead of running orphaned."""
    while not stopping.wait(1.0):
        if os.getppid() != parent_pid:
            logger.error("the supervisor (pid %d) is gone: stopping this worker", parent_pid)
            stopping.set()


def spawn_entry(settings: Settings, index: int) -> None:  # multiprocessing target
    raise SystemExit(worker_main(settings, index))
