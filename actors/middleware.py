"""Middleware the channel actors share."""

from __future__ import annotations

import asyncio
import logging
import threading

import dramatiq
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Middleware

from actors.providers import Provider
from db.database import db_session
from db.models import utcnow
from engine.sends import fail_exhausted
from ground.channels import channel_of_actor
from ground.metrics import SENDS
from ground.send_states import SendMetric

logger = logging.getLogger(__name__)


class DeadLetterSends(Middleware):
    """When a message is dead-lettered (retries exhausted), mark its unfinished sends failed.

    The message itself stays on the channel's dead-letter queue (``retentiond.<channel>.XQ``) for
    an operator; the database says what happened to each send.
    """

    def after_nack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        channel = channel_of_actor(message.actor_name)
        if channel is None or not message.args:
            return
        with db_session():
            failed = fail_exhausted(list(message.args[0]), utcnow())
        if failed:
            SENDS.labels(channel, SendMetric.FAILED).inc(len(failed))
            logger.warning("dead-lettered %d %s send(s) after %s retries", len(failed), channel,
                           message.options.get("retries"))


class StopFlag(Middleware):
    """Raises a flag when the worker starts shutting down, so senders stop starting provider calls.

    Sends not yet handed to a provider are released (back to ``queued``) and their message goes
    back on the queue; calls already in flight finish within the shutdown timeout.
    """

    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.flag.set()


class CloseProviders(Middleware):
    """Closes the channels' providers on the worker's event loop when the worker has stopped, so
    their pooled HTTP sessions close cleanly (a batch waiting in Postmark's batcher is flushed)
    instead of being torn down by the interpreter at exit.

    Added after Dramatiq's AsyncIO middleware: ``after_*`` hooks run in reverse middleware order, so
    this one runs before AsyncIO's stops the event loop.
    """

    CLOSE_TIMEOUT_S = 10.0

    def __init__(self, providers: list[Provider]) -> None:
        self.providers = providers

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        thread = get_event_loop_thread()
        if thread is None:
            return
        for provider in self.providers:
            try:
                asyncio.run_coroutine_threadsafe(provider.close(), thread.loop).result(self.CLOSE_TIMEOUT_S)
            except Exception as exc:  # closing is best effort: the process is about to end
                logger.warning("provider %s did not close cleanly: %s", provider.name, type(exc).__name__)
