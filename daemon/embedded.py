"""The embedded default (``memory://``): one worker process owns the in-memory queues.

Dramatiq's in-memory broker lives in one interpreter, and whoever enqueues must be in it. So on the
embedded default the daemon's main process keeps only the side server and its group commit, and
one spawned worker process (daemon/worker_process.py) holds the broker, the Dramatiq worker
threads, the scheduler's jobs (daemon/scheduler.py: planning, relaying, reconciling...) and the
event processor. The two interpreters run on two cores: the HTTP loop no longer shares its GIL
with processing and delivery (measured before: the HTTP loop held the GIL 92% of the time under
load, and processing, planning and sending waited for it).

The main process wakes the event processor after each group commit through a pipe (``WakePipe``),
which a thread here turns into a message for the event actor, at most one per ``WAKE_EVERY_S``; a
wake lost to a crash costs nothing, the scheduler's tick wakes the processor when events wait.

A queue in memory dies with its process: at start, before its worker threads run, the process
offers again every send left ``queued`` by the previous one (killed, or stopped before its queue
drained). The supervisor restarts the process if it dies, as it does RabbitMQ's workers.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

import dramatiq

from actors.events import ACTOR_NAME as EVENT_ACTOR
from actors.registry import channel_actors
from daemon.scheduler import Scheduler, SchedulerThread
from db.database import db_session
from db.models import utcnow
from engine.sends import requeue_lost
from ground.outage_log import OutageLog
from ground.settings import Settings

logger = logging.getLogger(__name__)

WAKE_POLL_S = 0.5  # how often the wake thread looks whether it should stop
WAKE_EVERY_S = 0.05  # at most one event-processor message per 50 ms (a pass takes what is pending)


class WakePipe:
    """The side server's wakes for the embedded worker process: one byte down a pipe whose writing
    end never blocks (a full pipe already holds wakes). Not a ``multiprocessing`` Event: a worker
    killed inside ``Event.wait`` stays counted as a waiter, and the side server's next ``set()``
    then waited for it forever, on the event loop, freezing HTTP and the shutdown."""

    def __init__(self, context: Any) -> None:
        self._reader, self._writer = context.Pipe(duplex=False)
        os.set_blocking(self._writer.fileno(), False)

    def wake(self) -> None:
        """Main process, on the event loop: never blocks."""
        try:
            os.write(self._writer.fileno(), b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wakes not yet read: one more adds nothing

    def wait(self, timeout_s: float) -> bool:
        """Worker process: True once woken (every wake written so far is consumed)."""
        if not self._reader.poll(timeout_s):
            return False
        fd = self._reader.fileno()
        os.set_blocking(fd, False)
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass  # drained
        return True


def requeue_lost_in_memory() -> None:
    """Sends left ``queued`` had their message in the memory of a process that is gone: offer them
    again now. Left for the reconciler (``RECONCILE_AFTER_S``), such sends would fill their
    channel's pacing window and hold a paced channel still. If another daemon on the same file
    still holds the message, the claim lets only one of the two messages send it."""
    try:
        with db_session():
            requeued = requeue_lost(utcnow())
    except Exception as exc:  # the database is away: the reconciler still covers these sends
        logger.warning("re-offering sends queued in a previous run's memory failed (%s)", type(exc).__name__)
        return
    if requeued:
        logger.info("%d send(s) queued in a previous run's memory offered again", requeued)


class EmbeddedDuties:
    """What the main process does with RabbitMQ, done where the in-memory queues are: the
    scheduler's jobs, and turning the side server's wakes into event-processor messages."""

    def __init__(self, settings: Settings, broker: dramatiq.Broker, wake: WakePipe) -> None:
        self.event_actor = broker.get_actor(EVENT_ACTOR)
        # The jobs' leases name the holder as the main process does (host:pid), which is how a
        # restore on this host tells a stopped daemon's lease from a live one (db/backup.py).
        instance_id = f"{socket.gethostname()}:{os.getpid()}"
        self.scheduler = Scheduler(settings, channel_actors(broker, settings), self.event_actor, instance_id)
        self.ticks = SchedulerThread(self.scheduler)
        self.wake = wake  # the WakePipe the main process writes to after a group commit
        self._stop = threading.Event()
        self._wake_outage = OutageLog(logger, "waking the event processor after a webhook")
        self._wakes = threading.Thread(target=self._relay_wakes, name="wakes", daemon=True)

    def start(self) -> EmbeddedDuties:
        self.ticks.start()
        self._wakes.start()
        return self

    def _relay_wakes(self) -> None:
        while not self._stop.is_set():
            if not self.wake.wait(WAKE_POLL_S):
                continue
            # the wakes read are consumed: one written from now on asks for one more pass
            try:
                self.event_actor.send()
            except Exception as exc:  # the scheduler's tick wakes the processor later
                self._wake_outage.failed(exc)
            else:
                self._wake_outage.succeeded()
            self._stop.wait(WAKE_EVERY_S)  # a burst of commits: one pass per 50 ms takes them all

    def stop(self, timeout_s: float) -> None:
        """No more scheduling or wakes; waits up to ``timeout_s`` for a tick under way."""
        self._stop.set()
        self.ticks.stop(timeout_s)
        self._wakes.join(WAKE_POLL_S + 1)
        totals = self.scheduler.totals
        logger.info("embedded scheduler stopped: %d step(s) planned, %d send(s) relayed, %d re-offered",
                    totals.planned, totals.relayed, totals.reoffered)
