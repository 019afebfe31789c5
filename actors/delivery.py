"""How a channel actor delivers a batch of sends: claim, wait for rate-limit slots, call, record.

A Dramatiq message carries a list of send ids (one channel). The worker thread does the database
work; the provider calls run concurrently on the process's event loop (Dramatiq's AsyncIO
middleware), each starting at its own rate-limit slot, at most ``concurrency`` in flight per
channel and process. So a worker thread is never limited to one provider call at a time.

Exactly once, as far as a crash allows: a send is claimed (``queued``/``retrying`` -> ``sending``)
in one UPDATE before any provider call, so a redelivered message finds nothing to claim for sends
already being sent or finished, and never calls the provider for them again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import dramatiq

from actors.providers.base import OutboundMessage, Provider
from actors.rate_limit import GlobalRateLimiter
from daemon.errors import PermanentChannelError, ProviderRateLimited, TransientChannelError
from daemon.metrics import PROVIDER_LATENCY, RATE_LIMIT_WAIT, SENDS
from db.database import database, db_session
from db.models import Send, utcnow

logger = logging.getLogger(__name__)

CLAIMABLE = ("queued", "retrying")


@dataclass(frozen=True)
class Outcome:
    send_id: int
    status: str  # sent | failed | retrying | queued (released unsent at shutdown)
    finished_at: dt.datetime | None = None
    provider_message_id: str | None = None
    error: str | None = None
    retry_after_s: float | None = None


class ChannelSender:
    """The body of one channel's actor."""

    def __init__(self, channel: str, provider: Provider, limiter: GlobalRateLimiter, concurrency: int,
                 event_loop: Callable[[], asyncio.AbstractEventLoop], stopping: threading.Event) -> None:
        self.channel = channel
        self.stopping = stopping
        self.provider = provider
        self.limiter = limiter
        self.concurrency = concurrency
        self._event_loop = event_loop
        self._in_flight: asyncio.Semaphore | None = None
        self.actor: dramatiq.Actor  # set once the actor wrapping this sender is declared
        self.__name__ = f"send_{channel}"  # Dramatiq names loggers after the callable

    def __call__(self, send_ids: list[int]) -> None:
        with db_session():
            messages = self._claim(send_ids)
        if not messages:
            logger.debug("nothing to claim on %s for %d send(s)", self.channel, len(send_ids))
            return
        outcomes = self._deliver(messages)
        with db_session():
            self._record(outcomes)
        released = [o.send_id for o in outcomes if o.status == "queued"]
        if released:
            # The worker is shutting down and these were never handed to the provider: a fresh
            # message (confirmed by RabbitMQ before this one is acked) takes them to the next
            # worker without spending a retry. If the broker refuses, raising leaves this
            # message unacked, and RabbitMQ redelivers it.
            self.actor.send(released)
            logger.info("shutting down: handed %d %s send(s) back to the queue", len(released), self.channel)
        retries = [o for o in outcomes if o.status == "retrying"]
        if retries:
            waits = [o.retry_after_s for o in retries if o.retry_after_s]
            if waits:
                with db_session():
                    self.limiter.penalize(max(waits))
            # Dramatiq retries the message with backoff and jitter; only the sends put back to
            # 'retrying' are claimed again, the sent ones are not called twice.
            raise TransientChannelError(f"{len(retries)} of {len(outcomes)} {self.channel} send(s) will be retried")

    # -- claim ------------------------------------------------------------------------------------

    def _claim(self, send_ids: list[int]) -> list[OutboundMessage]:
        now = utcnow()
        rows = (Send.update(status="sending", claimed_at=now, attempts=Send.attempts + 1)
                .where(Send.id.in_(send_ids), Send.status.in_(CLAIMABLE), Send.channel == self.channel)
                .returning(Send.id, Send.idempotency_key, Send.recipient, Send.subject, Send.body)
                .execute())
        return [OutboundMessage(send_id=r.id, channel=self.channel, idempotency_key=r.idempotency_key,
                                recipient=r.recipient, subject=r.subject, body=r.body)
                for r in rows]

    # -- deliver ----------------------------------------------------------------------------------

    def _deliver(self, messages: list[OutboundMessage]) -> list[Outcome]:
        loop = self._event_loop()
        futures: list[concurrent.futures.Future[Outcome]] = []
        position = 0
        while position < len(messages):
            if self.stopping.is_set():
                futures.extend(self._released(messages[position:]))
                break
            if self.limiter.unlimited:
                slots = [time.monotonic()] * (len(messages) - position)
            else:
                with db_session():
                    reservation = self.limiter.try_reserve(len(messages) - position)
                if isinstance(reservation, float):
                    self.stopping.wait(reservation)  # wakes at once when the worker stops
                    continue
                slots = [reservation.slot_at(i) for i in range(reservation.count)]
            for slot_at in slots:
                coroutine = self._send_one(messages[position], slot_at)
                futures.append(asyncio.run_coroutine_threadsafe(coroutine, loop))
                position += 1
        return [future.result() for future in futures]

    def _released(self, messages: list[OutboundMessage]) -> list[concurrent.futures.Future[Outcome]]:
        futures = []
        for message in messages:
            future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
            future.set_result(Outcome(message.send_id, "queued"))
            futures.append(future)
        return futures

    async def _send_one(self, message: OutboundMessage, slot_at: float) -> Outcome:
        waited = max(0.0, slot_at - time.monotonic())
        if waited:
            await asyncio.sleep(waited)
        RATE_LIMIT_WAIT.labels(self.channel).observe(waited)
        if self._in_flight is None:
            self._in_flight = asyncio.Semaphore(self.concurrency)
        async with self._in_flight:
            if self.stopping.is_set():
                return Outcome(message.send_id, "queued")
            started = time.perf_counter()
            try:
                result = await self.provider.send(message)
            except ProviderRateLimited as exc:
                return Outcome(message.send_id, "retrying", error=str(exc), retry_after_s=exc.retry_after_s)
            except TransientChannelError as exc:
                return Outcome(message.send_id, "retrying", error=str(exc))
            except PermanentChannelError as exc:
                return Outcome(message.send_id, "failed", error=str(exc))
            except Exception as exc:  # a provider bug must not lose the send: retry it, log it
                logger.exception("provider %s raised unexpectedly for send %d", self.provider.name, message.send_id)
                return Outcome(message.send_id, "retrying", error=f"{type(exc).__name__}: {exc}")
            finally:
                PROVIDER_LATENCY.labels(self.channel, self.provider.name).observe(time.perf_counter() - started)
        return Outcome(message.send_id, "sent", finished_at=utcnow(), provider_message_id=result.provider_message_id)

    # -- record -----------------------------------------------------------------------------------

    def _record(self, outcomes: list[Outcome]) -> None:
        now = utcnow()
        with database.atomic():
            for o in outcomes:
                values: dict = {"status": o.status, "error": o.error}
                if o.status == "sent":
                    values.update(provider=self.provider.name, provider_message_id=o.provider_message_id,
                                  finished_at=o.finished_at)
                elif o.status == "failed":
                    values.update(provider=self.provider.name, finished_at=now, reason="provider refused")
                elif o.status == "queued":  # released unsent: this claim did not count as an attempt
                    values.update(attempts=Send.attempts - 1, claimed_at=None)
                Send.update(values).where(Send.id == o.send_id, Send.status == "sending").execute()
        for o in outcomes:
            if o.status != "queued":
                SENDS.labels(self.channel, "retried" if o.status == "retrying" else o.status).inc()
