"""The daemon's main process: side server, scheduler loop, and the worker processes it supervises.

The main process owns the signals (aiohttp's runner runs with ``handle_signals=False``). On SIGTERM
or SIGINT it shuts down in order, within ``shutdown_timeout_s``:

1. stop accepting HTTP (the side server closes its listening socket);
2. stop the scheduler loop (no new enqueues);
3. SIGTERM the workers, which finish or hand back their messages; kill any still alive at the deadline;
4. close the broker and the database;
5. log one summary line and exit (0, or RET_SHUTDOWN_TIMEOUT when a worker had to be killed).

With the in-process broker (``memory://``) there are no worker processes: the Dramatiq worker
threads run inside the main process, since the queue lives in its memory.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.process import BaseProcess

import dramatiq
from aiohttp import web

from actors.broker import build_broker
from actors.events import ACTOR_NAME as EVENT_ACTOR
from actors.rabbitmq import check_queues
from daemon.exit_codes import RET_OK, RET_SHUTDOWN_TIMEOUT
from daemon.scheduler import Scheduler
from daemon.systemd_notify import notify
from daemon.web.app import build_app, make_runner
from daemon.worker_process import spawn_entry
from db.database import close_database, db_session
from db.models import utcnow
from engine.sends import requeue_lost
from ground import metrics
from ground.channels import CHANNELS
from ground.errors import ConfigError
from ground.outage_log import OutageLog
from ground.settings import PREFIX, Settings
from ground.urls import redact_url

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = 1.0


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    """One line naming the address and why (asyncio's own message repeats the address as a tuple)."""
    if isinstance(exc, socket.gaierror):  # its errno is getaddrinfo's (EAI_*), not an OS error number
        reason, setting = f"the host name does not resolve ({exc.strerror or exc})".lower(), "HTTP_HOST"
    else:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        setting = "HTTP_HOST" if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) else "HTTP_PORT"
    return ConfigError(f"{PREFIX}{setting}", f"cannot listen on {host}:{port}: {reason}")


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}"
        self._mp = multiprocessing.get_context("spawn")
        self._children: dict[int, BaseProcess] = {}
        self._stopping = asyncio.Event()
        self._in_process_worker: dramatiq.Worker | None = None
        self._restarts = 0
        self._last_wake = 0.0
        # A tick every 250 ms and a wake per webhook batch: failures logged once per outage.
        self._tick_outage = OutageLog(logger, "scheduler tick")
        self._wake_outage = OutageLog(logger, "waking the event processor after a webhook")

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self) -> int:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)

        metrics.initialise_labels(self.settings.sources)
        self.broker = build_broker(self.settings)
        # A queue of another type than the one asked for (classic vs quorum) stops the start: exit 2.
        check_queues(self.broker)
        self.actors = {name: self.broker.get_actor(CHANNELS[name].actor_name) for name in self.settings.rates}
        self.scheduler = Scheduler(self.settings, self.actors, self.broker.get_actor(EVENT_ACTOR), self.instance_id)

        self.event_actor = self.broker.get_actor(EVENT_ACTOR)
        runner = make_runner(build_app(self.settings, wake=self._wake_processing), self.settings)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.http_host, self.settings.http_port, reuse_address=True)
        # Bind before any worker starts: a port in use is a bad setting (exit 2, one line), and
        # nothing may be left running behind it (worker threads or processes kept it alive before).
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self.broker.close()
            raise _bind_error(self.settings.http_host, self.settings.http_port, exc) from None
        await asyncio.to_thread(self._replay_journals)
        if self.settings.is_memory_broker:
            await asyncio.to_thread(self._requeue_lost_in_memory)
        self._start_workers()
        logger.info("retentiond %s started: side server on http://%s:%d, database %s, broker %s, %s",
                    self.instance_id, self.settings.http_host, self.settings.http_port,
                    redact_url(self.settings.database_url), redact_url(self.settings.broker_url),
                    "in-process workers" if self.settings.is_memory_broker
                    else f"{self.settings.processes} worker process(es) x {self.settings.threads} threads")

        # systemd (Type=notify): ready now that the side server listens; the schema was checked before.
        notify(f"READY=1\nSTATUS=serving on {self.settings.http_host}:{self.settings.http_port}")

        tasks = [asyncio.create_task(self._scheduler_loop(), name="scheduler")]
        if not self.settings.is_memory_broker:
            tasks.append(asyncio.create_task(self._supervise_children(), name="supervisor"))

        await self._stopping.wait()
        notify("STOPPING=1")
        # The shutdown is under way and bounded by SHUTDOWN_TIMEOUT_S; a repeated SIGTERM (Ctrl-C
        # twice, a supervisor repeating itself) must not cut it short. The loop's handlers ignore
        # them until it closes, which puts SIGTERM back to its default action (death by signal)
        # for the rest of the teardown: from here on the process ignores both signals instead.
        _ignore_stop_signals(loop)
        deadline = time.monotonic() + self.settings.shutdown_timeout_s

        # 1. no more HTTP
        await site.stop()
        await runner.cleanup()
        # 2. no more scheduling
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # 3. workers finish or give back their messages
        killed = await asyncio.to_thread(self._stop_workers, deadline)
        # 4. connections
        self.broker.close()
        close_database()
        code = RET_SHUTDOWN_TIMEOUT if killed else RET_OK
        logger.info("retentiond %s stopped after %.1fs: %d step(s) planned, %d send(s) relayed, "
                    "%d re-offered, %d worker restart(s), %d worker(s) killed at the deadline, exit %d",
                    self.instance_id, time.monotonic() - started, self.scheduler.totals.planned,
                    self.scheduler.totals.relayed, self.scheduler.totals.reoffered,
                    self._restarts, killed, code)
        return code

    def _wake_processing(self, new_events: int) -> None:
        """After a group commit: one message for the event processor, at most every 50 ms, published
        off the event loop (with the broker away it fails; the scheduler's tick wakes it later)."""
        now = time.monotonic()
        if now - self._last_wake < 0.05:
            return
        self._last_wake = now
        asyncio.get_running_loop().run_in_executor(None, self._send_wake)

    def _send_wake(self) -> None:
        try:
            self.event_actor.send()
        except Exception as exc:  # the scheduler's tick wakes it once the broker is back
            self._wake_outage.failed(exc)
        else:
            self._wake_outage.succeeded()

    def _request_stop(self, sig: signal.Signals) -> None:
        if not self._stopping.is_set():
            logger.info("received %s: shutting down within %.0fs", sig.name, self.settings.shutdown_timeout_s)
            self._stopping.set()

    # -- workers ----------------------------------------------------------------------------------

    def _replay_journals(self) -> None:
        """Before any worker starts or the reconciler runs: results that workers of this host got
        from providers but never wrote (killed, or stopped during a database outage) are written
        now, so their sends are settled instead of re-offered and sent twice. If the database is
        away, the files stay and the workers' heartbeats replay them once it answers."""
        from engine.journal import replay_orphans

        try:
            replay_orphans(self.settings.journal_dir)
        except Exception as exc:
            logger.warning("replaying the journals of stopped workers failed (%s); the workers retry",
                           type(exc).__name__)

    def _requeue_lost_in_memory(self) -> None:
        """On the in-process broker, a send left ``queued`` had its message in the memory of a daemon
        that is gone (killed, or stopped before its queue drained): offer it again now. Left for the
        reconciler (``RECONCILE_AFTER_S``), such sends would fill their channel's pacing window and
        hold a paced channel still. If another daemon on the same file still holds the message, the
        claim lets only one of the two messages send it."""
        try:
            with db_session():
                requeued = requeue_lost(utcnow())
        except Exception as exc:  # the database is away: the reconciler still covers these sends
            logger.warning("re-offering sends queued in a previous run's memory failed (%s)", type(exc).__name__)
            return
        if requeued:
            logger.info("%d send(s) queued in a previous run's memory offered again", requeued)

    def _start_workers(self) -> None:
        if self.settings.is_memory_broker:
            from daemon.worker_process import Liveness

            self._liveness = Liveness(self.settings).start()  # the worker threads claim under this process
            self._in_process_worker = dramatiq.Worker(self.broker, worker_threads=self.settings.threads)
            self._in_process_worker.start()
            return
        for index in range(self.settings.processes):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        process = self._mp.Process(target=spawn_entry, args=(self.settings, index),
                                   name=f"retentiond-worker-{index}", daemon=False)
        process.start()
        self._children[index] = process

    async def _supervise_children(self) -> None:
        """Restart a worker process that died on its own (a crash, the OOM killer)."""
        while True:
            await asyncio.sleep(RESTART_BACKOFF_S)
            for index, process in list(self._children.items()):
                if not process.is_alive() and not self._stopping.is_set():
                    logger.error("worker %d (pid %s) exited with %s; restarting it",
                                 index, process.pid, process.exitcode)
                    if process.pid:
                        metrics.mark_process_dead(process.pid)
                    self._restarts += 1
                    self._spawn(index)

    def _stop_workers(self, deadline: float) -> int:
        """Stop every worker by the deadline; return how many had to be killed."""
        if self._in_process_worker is not None:
            remaining_ms = max(1000, int((deadline - time.monotonic()) * 1000))
            self._in_process_worker.stop(timeout=remaining_ms)
            self._liveness.stop()
            return 0
        for process in self._children.values():
            if process.is_alive() and process.pid:
                os.kill(process.pid, signal.SIGTERM)
        killed = 0
        for process in self._children.values():
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.error("worker pid %s still running at the shutdown deadline: killing it", process.pid)
                process.kill()
                process.join()
                killed += 1
            if process.pid:
                metrics.mark_process_dead(process.pid)
        return killed

    # -- scheduler --------------------------------------------------------------------------------

    async def _scheduler_loop(self) -> None:
        """Run the periodic jobs that are due (daemon/scheduler.py), several times per interval so a
        job another instance gave up is taken over quickly."""
        interval = min(self.settings.scheduler_interval_s / 4, 0.25)
        while True:
            started = time.monotonic()
            try:
                await asyncio.to_thread(self.scheduler.tick)
            except Exception as exc:
                # The database or broker is away: the rows stay planned, the next tick tries again.
                self._tick_outage.failed(exc, logging.ERROR)
            else:
                self._tick_outage.succeeded()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


def _ignore_stop_signals(loop: asyncio.AbstractEventLoop) -> None:
    """SIGTERM and SIGINT ignored from now on, with no instant at their default action: blocked
    while the loop's handlers are removed (which restores the defaults), then ignored, then
    unblocked (one that arrived meanwhile is then discarded)."""
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
