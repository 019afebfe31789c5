"""The daemon's main process: side server, scheduler thread, and the worker processes it supervises.

The main process owns the signals (aiohttp's runner runs with ``handle_signals=False``). On SIGTERM
or SIGINT it shuts down in order, within ``shutdown_timeout_s``:

1. stop accepting HTTP (the side server closes its listening socket);
2. stop the scheduler loop (no new enqueues);
3. SIGTERM the workers, which finish or hand back their messages; kill any still alive at the deadline;
4. close the broker and the database;
5. log one summary line and exit (0, or RET_SHUTDOWN_TIMEOUT when a worker had to be killed).

With the in-memory broker (``memory://``, the embedded default) there is one worker process, which
owns the queues and so also runs the scheduler's jobs (daemon/embedded.py); this process keeps the
side server and wakes the event processor through a pipe (daemon/embedded.py ``WakePipe``).
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
from actors.registry import channel_actors
from daemon.embedded import WAKE_EVERY_S, WakePipe
from daemon.exit_codes import RET_OK, RET_SHUTDOWN_TIMEOUT
from daemon.scheduler import Scheduler, SchedulerThread
from daemon.stop_signals import ignore_stop_signals, on_stop_signal
from daemon.systemd_notify import notify
from daemon.web.app import build_admin_app, build_public_app, make_runner
from daemon.worker_process import spawn_entry
from db.database import close_database
from ground import metrics
from ground.errors import ConfigError
from ground.outage_log import OutageLog
from ground.settings import PREFIX, Settings
from ground.urls import redact_url

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = 1.0


def _bind_error(listener: str, host: str, port: int, exc: OSError) -> ConfigError:
    """One line naming the address and why (asyncio's own message repeats the address as a tuple);
    ``listener`` is the settings' prefix, HTTP (public) or ADMIN (operators)."""
    if isinstance(exc, socket.gaierror):  # its errno is getaddrinfo's (EAI_*), not an OS error number
        reason, setting = f"the host name does not resolve ({exc.strerror or exc})".lower(), "HOST"
    else:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        setting = "HOST" if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) else "PORT"
    return ConfigError(f"{PREFIX}{listener}_{setting}", f"cannot listen on {host}:{port}: {reason}")


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}"
        self._mp = multiprocessing.get_context("spawn")
        self._children: dict[int, BaseProcess] = {}
        self._stopping = asyncio.Event()
        self._restarts = 0
        self._last_wake = 0.0
        self._wake_scheduled = False
        # Embedded: the side server's wakes for the worker process that owns the in-memory queues.
        self._wake = WakePipe(self._mp) if settings.is_memory_broker else None
        self.scheduler: Scheduler | None = None
        self._ticks: SchedulerThread | None = None
        self.broker: dramatiq.Broker | None = None
        # A wake per webhook batch: failures logged once per outage.
        self._wake_outage = OutageLog(logger, "waking the event processor after a webhook")

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self) -> int:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        on_stop_signal(loop, self._request_stop)

        metrics.initialise_labels(self.settings.sources)
        if not self.settings.is_memory_broker:  # embedded: the worker process owns the queues
            self.broker = build_broker(self.settings)
            # A queue of another type than the one asked for (classic vs quorum) stops the start: exit 2.
            check_queues(self.broker)
            self.event_actor = self.broker.get_actor(EVENT_ACTOR)
            self.scheduler = Scheduler(self.settings, channel_actors(self.broker, self.settings), self.event_actor,
                                       self.instance_id)
        # Both listeners bound before any worker starts: a port in use is a bad setting (exit 2,
        # one line), and nothing may be left running behind it (worker threads or processes kept
        # it alive before).
        runners = [make_runner(build_public_app(self.settings, wake=self._wake_processing), self.settings),
                   make_runner(build_admin_app(self.settings), self.settings)]
        addresses = [("HTTP", self.settings.http_host, self.settings.http_port),
                     ("ADMIN", self.settings.admin_host, self.settings.admin_port)]
        set_up: list[web.AppRunner] = []
        for runner, (listener, host, port) in zip(runners, addresses, strict=True):
            await runner.setup()
            set_up.append(runner)
            try:
                await web.TCPSite(runner, host, port, reuse_address=True).start()
            except OSError as exc:
                for each in set_up:
                    await each.cleanup()
                if self.broker is not None:
                    self.broker.close()
                raise _bind_error(listener, host, port, exc) from None
        await asyncio.to_thread(self._replay_journals)
        self._start_workers()
        logger.info("retentiond %s started: public listener on http://%s:%d, operators' on http://%s:%d, "
                    "database %s, broker %s, %s",
                    self.instance_id, self.settings.http_host, self.settings.http_port,
                    self.settings.admin_host, self.settings.admin_port,
                    redact_url(self.settings.database_url), redact_url(self.settings.broker_url),
                    f"embedded: 1 worker process x {self.settings.threads} threads with the in-memory queues"
                    if self.settings.is_memory_broker
                    else f"{self.settings.processes} worker process(es) x {self.settings.threads} threads")

        # systemd (Type=notify): ready now that the side server listens; the schema was checked before.
        notify(f"READY=1\nSTATUS=serving on {self.settings.http_host}:{self.settings.http_port}")

        if self.scheduler is not None:
            self._ticks = SchedulerThread(self.scheduler).start()
        supervising = asyncio.create_task(self._supervise_children(), name="supervisor")

        await self._stopping.wait()
        notify("STOPPING=1")
        # The shutdown is under way and bounded by SHUTDOWN_TIMEOUT_S: a repeated SIGTERM must
        # not cut it short (daemon/stop_signals.py says why this is not remove_signal_handler).
        ignore_stop_signals()
        deadline = time.monotonic() + self.settings.shutdown_timeout_s

        # 1. no more HTTP
        for runner in runners:
            await runner.cleanup()
        # 2. no more scheduling (embedded: the worker process stops its own first); a tick under
        # way may finish while the workers stop, not before they are told (a long plan, or a
        # database outage, would have eaten their share of the deadline)
        supervising.cancel()
        await asyncio.gather(supervising, return_exceptions=True)
        if self._ticks is not None:
            self._ticks.request_stop()
        # 3. workers finish or give back their messages
        killed = await asyncio.to_thread(self._stop_workers, deadline)
        if self._ticks is not None:
            await asyncio.to_thread(self._ticks.join, max(0.0, deadline - time.monotonic()))
        # 4. connections
        if self.broker is not None:
            self.broker.close()
        close_database()
        code = RET_SHUTDOWN_TIMEOUT if killed else RET_OK
        totals = self.scheduler.totals if self.scheduler is not None else None
        logger.info("retentiond %s stopped after %.1fs: %s%d worker restart(s), %d worker(s) killed at the "
                    "deadline, exit %d", self.instance_id, time.monotonic() - started,
                    f"{totals.planned} step(s) planned, {totals.relayed} send(s) relayed, {totals.reoffered} "
                    "re-offered, " if totals is not None else "", self._restarts, killed, code)
        return code

    def _wake_processing(self, new_events: int) -> None:
        """After a group commit: wake the event processor. Embedded: the worker process that owns
        the in-memory queues is told through a pipe (one byte, never blocking). RabbitMQ: one
        message at most every 50 ms, published off the event loop; a commit inside those 50 ms gets
        the next one (dropping it left its events waiting for the scheduler's tick). With the
        broker away the publish fails; the tick wakes the processor later."""
        if self._wake is not None:
            self._wake.wake()
            return
        if self._wake_scheduled:
            return
        self._wake_scheduled = True
        delay = max(0.0, self._last_wake + WAKE_EVERY_S - time.monotonic())
        asyncio.get_running_loop().call_later(delay, self._publish_wake)

    def _publish_wake(self) -> None:
        self._wake_scheduled = False
        self._last_wake = time.monotonic()
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

    def _start_workers(self) -> None:
        # Embedded: one process, since the in-memory queues cannot be shared between processes.
        for index in range(1 if self.settings.is_memory_broker else self.settings.processes):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        process = self._mp.Process(target=spawn_entry, args=(self.settings, index, self._wake),
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

