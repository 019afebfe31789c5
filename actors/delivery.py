"""How a channel actor delivers a batch of sends: claim, check, wait for rate-limit slots, call, settle.

A Dramatiq message carries a list of send ids (one channel). The worker thread does the database
work; the provider calls run concurrently on the process's event loop (Dramatiq's AsyncIO
middleware), each starting at its own rate-limit slot, at most ``concurrency`` in flight per
channel and process. So a worker thread is never limited to one provider call at a time.

Exactly once, as far as a crash allows: a send is claimed (``queued``/``retrying`` -> ``sending``,
with this worker's instance id) in one UPDATE before any provider call, so a redelivered message
finds nothing to claim for sends already being sent or finished, and never calls the provider for
them again. Results are written as calls finish (at most ``SETTLE_EVERY_S`` late).

Outcomes are never forgotten: each result is appended to this process's journal
(engine/journal.py) the moment its provider call returns, on the event loop, by one write into the
OS page cache; each slice of results is fsync'd BEFORE its database write is tried. So a kill -9
loses nothing that came back from the provider, and a power loss at most the answers of the last
``SETTLE_EVERY_S``. When the database fails, the
write is retried with backoff (0.2 s doubling to 5 s) for as long as the process lives, the message
stays unacknowledged, no new call of the batch starts, and the sends not yet called are put back
(``sending`` -> ``queued``) and handed to the queue the moment the database answers again. A worker
killed before the write leaves the journal, which the next start replays. Claims and checks that
fail on the database are retried the same way. The one window left is a crash between a provider
accepting a call and its answer coming back: the calls on the wire (at most ``concurrency`` per
channel and process). Their sends are
re-offered once the worker stops beating (engine/workers.py), with the same idempotency key, which
providers that honour one (Twilio's I-Twilio-Idempotency-Token, the simulator) use to drop the repeat.

Per send, what happens is one of: sent; failed (permanent: recorded, never retried, the step's
fallback channel tried when there is one); retried (transient: Dramatiq retries the message with
backoff and jitter, only the failed sends are claimed again, dead-lettered after MAX_RETRIES);
deferred (a 429/Retry-After, quiet hours or a cooldown: back to the outbox with a due time, no
attempt spent; a 429 also holds the whole channel); skipped (caps, suppression, consent, no
address — or fell back to the step's fallback channel). Each lands in the decision log.

This module is the concurrency around a send's life: threads, the event loop, batching, the
journal at call time, the claim lock. The transitions themselves (claim, checks, settle) and what
each outcome means are engine/sends.py's and engine/outcomes.py's, called once per phase.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import dramatiq
import peewee
from playhouse.pool import MaxConnectionsExceeded

from actors.providers.base import OutboundMessage, Provider
from actors.rate_limit import GlobalRateLimiter
from db.database import db_session
from db.models import utcnow
from engine import sends
from engine.campaign_metrics import count_sends
from engine.checks import SendChecks
from engine.outcomes import CallOutcome, ClaimedSend, Result, from_call
from engine.sends import settle
from engine.workers import ThisProcess
from engine.workers import current as this_process
from ground.channels import CHANNELS
from ground.errors import (
    DevicesGone,
    PermanentChannelError,
    ProviderRateLimited,
    TransientChannelError,
    UnbuildableMessage,
)
from ground.metrics import CAMPAIGN_SEND_STATUSES, PROVIDER_LATENCY, RATE_LIMIT_WAIT, SENDS
from ground.outage_log import OutageLog
from ground.send_states import EFFECTS, Outcome
from ground.settings import Settings

logger = logging.getLogger(__name__)

SETTLE_EVERY_S = 0.1  # while a batch's calls run, the finished ones are recorded at least this often
# A database write that failed is tried again after 0.2 s, doubling up to 5 s: quick enough that a
# blip costs a fraction of a second, slow enough that eight threads of each worker do not hammer a
# recovering server (or a pool waiting on connect timeouts).
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0
# What "the database is away" looks like to claims and checks: no connection, a dropped one, a
# pool with none free, a read-only or full server. Anything else is a bug and fails the message.
_DATABASE_DOWN = (peewee.OperationalError, peewee.InterfaceError, peewee.InternalError, MaxConnectionsExceeded, OSError)
_T = TypeVar("_T")


class ChannelSender:
    """The body of one channel's actor."""

    def __init__(self, channel: str, provider: Provider, limiter: GlobalRateLimiter, concurrency: int,
                 event_loop: Callable[[], asyncio.AbstractEventLoop], stopping: threading.Event,
                 settings: Settings) -> None:
        self.channel = channel
        self.provider = provider
        self.limiter = limiter
        self.concurrency = concurrency
        self.stopping = stopping
        self.settings = settings
        self.checks = SendChecks(settings)
        self._event_loop = event_loop
        self._in_flight: asyncio.Semaphore | None = None
        self.actor: dramatiq.Actor  # set once the actor wrapping this sender is declared
        self.__name__ = CHANNELS[channel].actor_name  # Dramatiq names loggers after the callable
        # eight threads per worker meet the same outage: told once, with a summary a minute
        self._claim_outage = OutageLog(logger, f"claiming {channel} sends")
        self._write_outage = OutageLog(logger, f"writing {channel} send results")
        self._journal_outage = OutageLog(logger, f"journaling {channel} send results")
        # Set by any thread whose database write failed, cleared by any that succeeds: while it is
        # set, no batch of this process starts a call (the database is away for all of them).
        self._database_down = threading.Event()

    def __call__(self, send_ids: list[int]) -> None:
        me = this_process()
        claimed = self._with_database(lambda: self._claim(send_ids, me.instance), self._claim_outage)
        if not claimed:
            logger.debug("nothing to claim on %s for %d send(s)", self.channel, len(send_ids))
            return
        unwritten: set[int] = set()
        try:
            unwritten = self._process(claimed, me)
        finally:
            # sends whose results wait in the journal stay held: no retried claim takes them back
            _let_go([s for s in claimed if s.id not in unwritten])

    def _process(self, claimed: list[ClaimedSend], me: ThisProcess) -> set[int]:
        """Check, call, write; returns the sends whose results are left to the journal (shutdown)."""
        try:
            prepared = self._with_database(
                lambda: sends.prepare(claimed, self.checks, self.settings.public_url, utcnow(), me.instance),
                self._claim_outage)
        except Exception:
            # Not a database outage (or a shutdown during one): undo the claims, best effort, so
            # the message's retry (or the reconciler) finds them queued rather than held by a
            # worker that lives on and whose claims are therefore never re-offered.
            self._unclaim(claimed, me.instance)
            raise
        self._count(prepared.held)
        batch = _Batch(me, prepared.fallbacks, {s.id: s for s in prepared.to_send})
        messages = [self._message(s, prepared.headers.get(s.id, {}), prepared.devices.get(s.id, {}))
                    for s in prepared.to_send]
        calls = self._deliver(messages, batch) if messages else []
        if not self._write_all(batch):
            logger.warning("shutting down with %d %s result(s) not yet written: kept in the journal for the "
                           "next start", len(batch.unwritten), self.channel)
            return {r.send.id for r, _ in batch.unwritten}

        released = sorted(batch.released)
        if released:
            # Never handed to the provider (a shutdown, or the database failed mid-batch): now
            # 'queued' again, a fresh message (confirmed by RabbitMQ before this one is acked)
            # takes them to the next free worker without spending a retry. If the broker refuses,
            # raising leaves this message unacked, and RabbitMQ redelivers it.
            self.actor.send(released)
            logger.info("%s: handed %d %s send(s) back to the queue",
                        "shutting down" if self.stopping.is_set() else "database failed mid-batch",
                        len(released), self.channel)
        retries = [c for c in calls if c.status == Outcome.RETRYING]
        if retries:
            # Dramatiq retries the message with backoff and jitter; only the sends put back to
            # 'retrying' are claimed again, the sent ones are not called twice.
            raise TransientChannelError(f"{len(retries)} of {len(calls)} {self.channel} send(s) will be retried")
        return set()

    def _unclaim(self, claimed: list[ClaimedSend], instance: str) -> None:
        try:
            with db_session():
                sends.release(claimed, utcnow(), claimant=instance)
        except Exception as exc:
            logger.warning("could not hand %d %s send(s) back after a failure: %s", len(claimed), self.channel,
                           type(exc).__name__)

    def _with_database(self, work: Callable[[], _T], outage: OutageLog) -> _T:
        """Run ``work`` in a database session, retried with backoff while the database is away
        (the message stays unacknowledged); at shutdown the last failure is raised."""
        delay = RETRY_FIRST_S
        while True:
            try:
                with db_session():
                    value = work()
            except _DATABASE_DOWN as exc:
                outage.failed(exc)
                if self.stopping.wait(delay):
                    raise
                delay = min(RETRY_MAX_S, delay * 2)
            else:
                outage.succeeded()
                self._database_down.clear()
                return value

    # -- claim ------------------------------------------------------------------------------------

    def _claim(self, send_ids: list[int], instance: str) -> list[ClaimedSend]:
        """Claim the sends still waiting, and our own claims no thread of ours holds: a claim whose
        commit went through while its answer was lost to a dropped connection would otherwise sit
        ``sending`` under a live worker, whose claims the reconciler never re-offers."""
        with _claiming:
            claimed = sends.claim(self.channel, send_ids, instance, utcnow(), in_hand=_in_hand(send_ids))
            _hold(claimed)
            return claimed

    def _message(self, s: ClaimedSend, headers: dict[str, str],
                 devices: dict[str, tuple[str, ...]]) -> OutboundMessage:
        return OutboundMessage(send_id=s.id, channel=self.channel, idempotency_key=s.idempotency_key,
                               recipient=s.recipient, subject=s.subject, body=s.body, headers=headers,
                               markup=s.markup, devices=devices)

    # -- deliver ----------------------------------------------------------------------------------

    def _deliver(self, messages: list[OutboundMessage], batch: _Batch) -> list[CallOutcome]:
        """Start each call at its rate-limit slot; each answer is journaled as it comes back (on
        the event loop); while calls run, the results of the finished ones are written at least
        every SETTLE_EVERY_S. A crash then repeats only the calls of its last moments, not every
        call of the batch. Once the database fails (``batch.halted``), no further call starts:
        the rest are released. Returns every outcome, in the order they finished."""
        loop = self._event_loop()
        calls = _InFlight(lambda finished: self._settle_calls(finished, batch), self.stopping)
        position = 0
        if self.limiter.unlimited:
            hold = self._limiter_call(self.limiter.hold_s, batch)
            if hold:
                self._pause(hold, batch, calls)  # a 429 holds the channel, limited or not
        while position < len(messages):
            if self._halting(batch):
                calls.running.extend(_done(CallOutcome(m.send_id, Outcome.RELEASED)) for m in messages[position:])
                break
            if self.limiter.unlimited:
                slots = [time.monotonic()] * (len(messages) - position)
            else:
                reservation = self._limiter_call(functools.partial(self.limiter.try_reserve, len(messages) - position),
                                                 batch)
                if reservation is None:
                    continue  # the database failed: the loop releases the rest
                if isinstance(reservation, float):
                    self._pause(reservation, batch, calls)
                    continue
                slots = [reservation.slot_at(i) for i in range(reservation.count)]
            for slot_at in slots:
                calls.running.append(asyncio.run_coroutine_threadsafe(self._call(messages[position], slot_at, batch),
                                                                      loop))
                position += 1
        return calls.drain()

    async def _call(self, message: OutboundMessage, slot_at: float, batch: _Batch) -> CallOutcome:
        outcome = await self._send_one(message, slot_at, batch.halted)
        if outcome.status != Outcome.RELEASED:  # no await since the answer: nothing runs in between
            self._journal_answer(outcome, batch)
        return outcome

    def _pause(self, seconds: float, batch: _Batch, calls: _InFlight) -> None:
        """Wait, writing finished calls meanwhile; returns within SETTLE_EVERY_S of the worker stopping."""
        until = time.monotonic() + seconds
        while not self._halting(batch) and (left := until - time.monotonic()) > 0:
            calls.write_finished(min(SETTLE_EVERY_S, left))

    def _halting(self, batch: _Batch) -> bool:
        if self._database_down.is_set():
            batch.halted.set()
        return self.stopping.is_set() or batch.halted.is_set()

    def _limiter_call(self, call: Callable[[], _T], batch: _Batch) -> _T | None:
        """A rate-limiter query; when the database fails, the batch halts (None)."""
        try:
            with db_session():
                return call()
        except _DATABASE_DOWN as exc:
            self._write_outage.failed(exc)
            batch.halted.set()
            self._database_down.set()
            return None

    async def _send_one(self, message: OutboundMessage, slot_at: float, halted: threading.Event) -> CallOutcome:
        waited = max(0.0, slot_at - time.monotonic())
        if waited:
            await asyncio.sleep(waited)
        RATE_LIMIT_WAIT.labels(self.channel).observe(waited)
        if self._in_flight is None:
            self._in_flight = asyncio.Semaphore(self.concurrency)
        async with self._in_flight:
            if self.stopping.is_set() or halted.is_set() or self._database_down.is_set():
                halted.set()
                return CallOutcome(message.send_id, Outcome.RELEASED)  # not handed to the provider: put back
            started = time.perf_counter()
            try:
                result = await self.provider.send(message)
            except ProviderRateLimited as exc:
                return CallOutcome(message.send_id, Outcome.RATE_LIMITED, error=str(exc),
                                   retry_after_s=exc.retry_after_s)
            except TransientChannelError as exc:
                return CallOutcome(message.send_id, Outcome.RETRYING, error=str(exc))
            except DevicesGone as exc:
                return CallOutcome(message.send_id, Outcome.FAILED, error=str(exc), reason="every device is gone",
                                   invalid_devices=exc.devices)
            except UnbuildableMessage as exc:
                return CallOutcome(message.send_id, Outcome.FAILED, error=str(exc), reason="message cannot be built")
            except PermanentChannelError as exc:
                return CallOutcome(message.send_id, Outcome.FAILED, error=str(exc))
            except Exception as exc:  # a provider bug must not lose the send: retry it, log it
                logger.exception("provider %s raised unexpectedly for send %d", self.provider.name, message.send_id)
                return CallOutcome(message.send_id, Outcome.RETRYING, error=f"{type(exc).__name__}: {exc}")
            finally:
                PROVIDER_LATENCY.labels(self.channel, self.provider.name).observe(time.perf_counter() - started)
        return CallOutcome(message.send_id, Outcome.SENT, finished_at=utcnow(),
                           provider_message_id=result.provider_message_id, provider=result.provider,
                           invalid_devices=result.invalid_devices)

    # -- settle -----------------------------------------------------------------------------------

    def _journal_answer(self, call: CallOutcome, batch: _Batch) -> None:
        """On the event loop, as a provider call returns: its result into the journal (no fsync),
        so a kill -9 from now on cannot make the call go out again. A failure here is left to the
        slice, which journals what this did not."""
        result = self._result(batch, call)
        try:
            seq = batch.me.journal.append([(result, batch.fallbacks.get(result.send.step_id or 0))])[0]
        except OSError as exc:
            self._journal_outage.failed(exc, logging.ERROR)
            return
        except Exception:  # never into the call's future: that would lose the whole slice's answers
            logger.exception("could not journal the result of %s send %d", self.channel, call.send_id)
            return
        batch.journaled[call.send_id] = (result, seq)

    def _settle_calls(self, calls: list[CallOutcome], batch: _Batch) -> None:
        """Make the slice's answers durable (one fsync, before the database write; the ones not
        journaled at call time appended first), then try to write what is unwritten."""
        answered: list[tuple[Result, int | None]] = []
        unjournaled: list[Result] = []
        released: list[Result] = []
        for c in calls:
            known = batch.journaled.pop(c.send_id, None)
            if known is not None:
                answered.append(known)
            elif c.status == Outcome.RELEASED:
                released.append(self._result(batch, c))
            else:
                unjournaled.append(self._result(batch, c))
        journal = batch.me.journal
        try:
            seqs = journal.append([(r, batch.fallbacks.get(r.send.step_id or 0)) for r in unjournaled])
            answered.extend(zip(unjournaled, seqs, strict=True))
            unjournaled = []
            journal.sync()
        except OSError as exc:  # a full or broken disk: the database write below still carries them
            self._journal_outage.failed(exc, logging.ERROR)
        else:
            self._journal_outage.succeeded()
        batch.unwritten.extend(answered)
        batch.unwritten.extend((r, None) for r in unjournaled + released)
        batch.waits.extend(c.retry_after_s for c in calls if c.status == Outcome.RATE_LIMITED and c.retry_after_s)
        if time.monotonic() >= batch.next_try_at:
            self._write(batch)

    def _write(self, batch: _Batch) -> bool:
        """One attempt at writing the batch's unwritten results; on failure the batch halts and
        the next attempt waits (0.2 s doubling to 5 s). Any failure counts: a database that is
        away, read-only or full must not make a provider's answer be forgotten."""
        if not batch.unwritten:
            return True
        results = [r for r, _ in batch.unwritten]
        try:
            with db_session():
                applied = settle(results, utcnow(), claimant=batch.me.instance, step_fallbacks=batch.fallbacks)
                if batch.waits:
                    self.limiter.penalize(max(batch.waits))
        except Exception as exc:
            self._write_outage.failed(exc)
            batch.halted.set()
            self._database_down.set()
            batch.next_try_at = time.monotonic() + batch.backoff_s
            batch.backoff_s = min(RETRY_MAX_S, batch.backoff_s * 2)
            return False
        self._write_outage.succeeded()
        self._database_down.clear()
        batch.me.journal.settled(seq for _, seq in batch.unwritten if seq is not None)
        batch.released.update(r.send.id for r in applied if r.outcome == Outcome.RELEASED)
        batch.unwritten, batch.waits = [], []
        batch.backoff_s, batch.next_try_at = RETRY_FIRST_S, 0.0
        self._count(applied)
        return True

    def _write_all(self, batch: _Batch) -> bool:
        """Write what is left, retrying while the process lives; False if it shuts down first."""
        while batch.unwritten:
            wait_s = batch.next_try_at - time.monotonic()
            if self.stopping.wait(wait_s) if wait_s > 0 else self.stopping.is_set():
                return self._write(batch)  # one last try, then the journal keeps them
            self._write(batch)
        return True

    def _result(self, batch: _Batch, call: CallOutcome) -> Result:
        return from_call(batch.sends[call.send_id], call, self.provider.name)

    def _count(self, results: Iterable[Result]) -> None:
        by_status: dict[str, list[int | None]] = {}
        for r in results:
            metric = EFFECTS[r.outcome].metric
            if metric is not None:
                SENDS.labels(self.channel, metric).inc()
                if metric in CAMPAIGN_SEND_STATUSES:
                    by_status.setdefault(metric, []).append(r.send.step_id)
        for status, step_ids in by_status.items():
            count_sends(status, step_ids)


@dataclass
class _Batch:
    """One message's sends between their provider calls and the database."""

    me: ThisProcess
    fallbacks: dict[int, str]  # step id -> fallback channel
    sends: dict[int, ClaimedSend]  # the sends handed to the provider, by id
    halted: threading.Event = field(default_factory=threading.Event)  # the database failed: no new call
    unwritten: list[tuple[Result, int | None]] = field(default_factory=list)  # with their journal seq
    # send id -> its result and journal seq, journaled on the event loop as the call returned
    journaled: dict[int, tuple[Result, int]] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)  # Retry-After of 429s, for the limiter
    released: set[int] = field(default_factory=set)  # back to 'queued', to hand to the queue
    next_try_at: float = 0.0
    backoff_s: float = RETRY_FIRST_S


class _InFlight:
    """A batch's provider calls under way on the event loop, and the writing of the finished ones:
    once every call is done, or once the oldest unwritten one has waited SETTLE_EVERY_S (calls
    that finish together: one write)."""

    def __init__(self, write: Callable[[list[CallOutcome]], None], stopping: threading.Event) -> None:
        self.running: list[concurrent.futures.Future[CallOutcome]] = []
        self.finished: list[CallOutcome] = []  # in the order they were written
        self._write = write
        self._stopping = stopping
        self._first_finished_at: float | None = None  # when the oldest finished, unwritten call was seen

    def write_finished(self, wait_s: float) -> None:
        """Wait up to ``wait_s`` for calls; write the finished ones when it is time."""
        pending = [f for f in self.running if not f.done()]
        if pending:
            concurrent.futures.wait(pending, timeout=wait_s, return_when=(
                concurrent.futures.FIRST_COMPLETED if self._first_finished_at is None
                else concurrent.futures.ALL_COMPLETED))
        elif not self.running and wait_s > 0:
            self._stopping.wait(wait_s)
        done = [f for f in self.running if f.done()]
        if not done:
            return
        now = time.monotonic()
        self._first_finished_at = self._first_finished_at or now
        if len(done) < len(self.running) and now - self._first_finished_at < SETTLE_EVERY_S:
            return
        done_set = set(done)
        self.running = [f for f in self.running if f not in done_set]
        outcomes = [f.result() for f in done]
        self._write(outcomes)
        self.finished.extend(outcomes)
        self._first_finished_at = None

    def drain(self) -> list[CallOutcome]:
        """Wait for every call, writing as they finish; every outcome, in the order written."""
        while self.running:
            self.write_finished(SETTLE_EVERY_S)
        return self.finished


# Send ids some thread of this process holds (claimed and not yet finished with), so a claim
# retried after a lost answer takes back only our claims that nobody here is working on.
_held_ids: set[int] = set()
_held_lock = threading.Lock()
# One claim at a time in this process, from reading what is held to holding what was claimed: a
# thread that read `_held_ids` before another's committed claim was held took that claim for an
# orphan and sent the same sends again (seen as 1-4 duplicates in the in-process two-step test).
_claiming = threading.Lock()


def _hold(claimed: list[ClaimedSend]) -> None:
    with _held_lock:
        _held_ids.update(s.id for s in claimed)


def _let_go(claimed: list[ClaimedSend]) -> None:
    with _held_lock:
        _held_ids.difference_update(s.id for s in claimed)


def _in_hand(send_ids: list[int]) -> list[int]:
    with _held_lock:
        return [i for i in send_ids if i in _held_ids]


def _done(outcome: CallOutcome) -> concurrent.futures.Future[CallOutcome]:
    future: concurrent.futures.Future[CallOutcome] = concurrent.futures.Future()
    future.set_result(outcome)
    return future

