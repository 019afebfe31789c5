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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
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
from db.database import db_session, rows
from db.models import CampaignStep, Send, utcnow
from engine.checks import Candidate, SendChecks, Verdict
from engine.links import make_unsubscribe_tokens, unsubscribe_url
from engine.outcomes import ClaimedSend, Result, settle
from engine.workers import ThisProcess
from engine.workers import current as this_process
from ground.errors import (
    PermanentChannelError,
    ProviderRateLimited,
    TransientChannelError,
    UnbuildableMessage,
)
from ground.metrics import PROVIDER_LATENCY, RATE_LIMIT_WAIT, SENDS
from ground.outage_log import OutageLog
from ground.settings import Settings

logger = logging.getLogger(__name__)

CLAIMABLE = ("queued", "retrying")
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
_METRIC_STATUS = {"sent": "sent", "failed": "failed", "retrying": "retried", "deferred": "deferred",
                  "skipped": "skipped", "fell_back": "skipped"}


@dataclass(frozen=True)
class CallOutcome:
    """What one provider call came to."""

    send_id: int
    status: str  # sent | failed | retrying | rate_limited | released
    finished_at: dt.datetime | None = None
    provider_message_id: str | None = None
    error: str | None = None
    retry_after_s: float | None = None
    provider: str | None = None  # when not the channel's primary provider (failover)
    reason: str | None = None  # why it failed, when not "provider refused"


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
        self.__name__ = f"send_{channel}"  # Dramatiq names loggers after the callable
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
            to_send, headers, fallbacks = self._with_database(lambda: self._prepare(claimed, me.instance),
                                                              self._claim_outage)
        except Exception:
            # Not a database outage (or a shutdown during one): undo the claims, best effort, so
            # the message's retry (or the reconciler) finds them queued rather than held by a
            # worker that lives on and whose claims are therefore never re-offered.
            self._unclaim(claimed, me.instance)
            raise
        batch = _Batch(me, fallbacks)
        by_id = {s.id: s for s in to_send}
        calls = self._deliver([self._message(s, headers.get(s.id, {})) for s in to_send], batch,
                              lambda finished: self._settle_calls(finished, by_id, batch),
                              lambda call: self._journal_answer(call, by_id, batch)) if to_send else []
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
        retries = [c for c in calls if c.status == "retrying"]
        if retries:
            # Dramatiq retries the message with backoff and jitter; only the sends put back to
            # 'retrying' are claimed again, the sent ones are not called twice.
            raise TransientChannelError(f"{len(retries)} of {len(calls)} {self.channel} send(s) will be retried")
        return set()

    def _unclaim(self, claimed: list[ClaimedSend], instance: str) -> None:
        try:
            with db_session():
                settle([Result(s, "released") for s in claimed], utcnow(), claimant=instance)
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

    # -- claim and checks -------------------------------------------------------------------------

    def _claim(self, send_ids: list[int], instance: str) -> list[ClaimedSend]:
        """Claim the sends still waiting, and our own claims no thread of ours holds: a claim whose
        commit went through while its answer was lost to a dropped connection would otherwise sit
        ``sending`` under a live worker, whose claims the reconciler never re-offers."""
        with _claiming:
            claimed = self._claim_unguarded(send_ids, instance)
            _hold(claimed)
            return claimed

    def _claim_unguarded(self, send_ids: list[int], instance: str) -> list[ClaimedSend]:
        now = utcnow()
        orphaned = (Send.status == "sending") & (Send.claimed_by == instance)
        in_hand = _in_hand(send_ids)
        if in_hand:
            orphaned &= Send.id.not_in(in_hand)
        claimed = rows(Send.update(status="sending", claimed_at=now, claimed_by=instance, attempts=Send.attempts + 1)
                       .where(Send.id.in_(send_ids), Send.status.in_(CLAIMABLE) | orphaned, Send.channel == self.channel)
                       .returning(Send.id, Send.idempotency_key, Send.recipient, Send.subject, Send.body,
                                  Send.contact, Send.campaign, Send.step, Send.enrolment, Send.fallback_of,
                                  Send.attempts, Send.deferrals, Send.due_at, Send.queued_at, Send.claimed_at))
        return [ClaimedSend(id=r[0], idempotency_key=r[1], channel=self.channel, recipient=r[2], subject=r[3],
                            body=r[4], contact_id=r[5], campaign_id=r[6], step_id=r[7], enrolment_id=r[8],
                            fallback_of_id=r[9], attempts=r[10], deferrals=r[11], due_at=_as_dt(r[12]) or now,
                            queued_at=_as_dt(r[13]), claimed_at=_as_dt(r[14]))
                for r in claimed]

    def _prepare(self, claimed: list[ClaimedSend],
                 instance: str) -> tuple[list[ClaimedSend], dict[int, dict[str, str]], dict[int, str]]:
        """Checks: the sends held back are settled here, the others come back with their headers.
        Safe to run again after a failure (settle is idempotent)."""
        now = utcnow()
        fallbacks = self._step_fallbacks(claimed)
        verdicts = self.checks.evaluate([self._candidate(s, fallbacks) for s in claimed], now)
        held = [self._held(s, verdicts[s.id]) for s in claimed if verdicts[s.id].action != "send"]
        to_send = [s for s in claimed if verdicts[s.id].action == "send"]
        headers = self._headers(to_send)
        self._count(settle(held, now, claimant=instance))
        return to_send, headers, fallbacks

    @staticmethod
    def _step_fallbacks(claimed: list[ClaimedSend]) -> dict[int, str]:
        """The fallback channel of each step in the batch (sends that are fallbacks get none)."""
        step_ids = sorted({s.step_id for s in claimed if s.step_id is not None and s.fallback_of_id is None})
        if not step_ids:
            return {}
        return {step_id: channel for step_id, channel in rows(
            CampaignStep.select(CampaignStep.id, CampaignStep.fallback_channel)
            .where(CampaignStep.id.in_(step_ids), CampaignStep.fallback_channel.is_null(False)))}

    def _candidate(self, s: ClaimedSend, fallbacks: dict[int, str]) -> Candidate:
        fallback = fallbacks.get(s.step_id) if s.step_id is not None and s.fallback_of_id is None else None
        return Candidate(s.id, self.channel, s.contact_id, s.campaign_id, s.recipient, fallback)

    @staticmethod
    def _held(s: ClaimedSend, verdict: Verdict) -> Result:
        if verdict.action == "defer":
            return Result(s, "deferred", reason=verdict.reason, until=verdict.until)
        if verdict.action == "fallback":
            return Result(s, "fell_back", reason=verdict.reason, fallback_channel=verdict.fallback_channel,
                          fallback_recipient=verdict.fallback_recipient)
        return Result(s, "skipped", reason=verdict.reason)

    def _headers(self, to_send: list[ClaimedSend]) -> dict[int, dict[str, str]]:
        """List-Unsubscribe and RFC 8058 one-click headers on campaign emails."""
        if self.channel != "email":
            return {}
        campaign_sends = [s for s in to_send if s.contact_id is not None and s.campaign_id is not None]
        if not campaign_sends:
            return {}
        tokens = make_unsubscribe_tokens([(int(s.contact_id or 0), "email", s.id) for s in campaign_sends])
        return {s.id: {"List-Unsubscribe": f"<{unsubscribe_url(self.settings.public_url, token)}>",
                       "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
                for s, token in zip(campaign_sends, tokens, strict=True)}

    def _message(self, s: ClaimedSend, headers: dict[str, str]) -> OutboundMessage:
        return OutboundMessage(send_id=s.id, channel=self.channel, idempotency_key=s.idempotency_key,
                               recipient=s.recipient, subject=s.subject, body=s.body, headers=headers)

    # -- deliver ----------------------------------------------------------------------------------

    def _deliver(self, messages: list[OutboundMessage], batch: _Batch,
                 settle_slice: Callable[[list[CallOutcome]], None],
                 answered: Callable[[CallOutcome], None]) -> list[CallOutcome]:
        """Start each call at its rate-limit slot; ``answered`` sees each answer as it comes back
        (on the event loop); while calls run, write the results of the finished ones at least
        every SETTLE_EVERY_S. A crash then repeats only the calls of its last moments,
        not every call of the batch. Once the database fails (``batch.halted``), no further call
        starts: the rest are released. Returns every outcome, in the order they finished."""
        loop = self._event_loop()
        running: list[concurrent.futures.Future[CallOutcome]] = []
        finished: list[CallOutcome] = []

        first_finished_at: float | None = None  # when the oldest finished, unwritten call was seen

        def settle_finished(wait_s: float) -> None:
            """Wait up to ``wait_s`` for calls; write the finished ones once every call is done or
            the oldest of them has waited SETTLE_EVERY_S (calls that finish together: one write)."""
            nonlocal running, first_finished_at
            pending = [f for f in running if not f.done()]
            if pending:
                concurrent.futures.wait(pending, timeout=wait_s, return_when=(
                    concurrent.futures.FIRST_COMPLETED if first_finished_at is None
                    else concurrent.futures.ALL_COMPLETED))
            elif not running and wait_s > 0:
                self.stopping.wait(wait_s)
            done = [f for f in running if f.done()]
            if not done:
                return
            now = time.monotonic()
            first_finished_at = first_finished_at or now
            if len(done) < len(running) and now - first_finished_at < SETTLE_EVERY_S:
                return
            done_set = set(done)
            running = [f for f in running if f not in done_set]
            outcomes = [f.result() for f in done]
            settle_slice(outcomes)
            finished.extend(outcomes)
            first_finished_at = None

        def pause(seconds: float) -> None:
            """Wait, settling meanwhile; returns within SETTLE_EVERY_S of the worker stopping."""
            until = time.monotonic() + seconds
            while not self._halting(batch) and (left := until - time.monotonic()) > 0:
                settle_finished(min(SETTLE_EVERY_S, left))

        async def call(message: OutboundMessage, slot_at: float) -> CallOutcome:
            outcome = await self._send_one(message, slot_at, batch.halted)
            if outcome.status != "released":  # no await since the answer: nothing runs in between
                answered(outcome)
            return outcome

        position = 0
        if self.limiter.unlimited:
            hold = self._limiter_call(self.limiter.hold_s, batch)
            if hold:
                pause(hold)  # a 429 holds the channel, limited or not
        while position < len(messages):
            if self._halting(batch):
                running.extend(_done(CallOutcome(m.send_id, "released")) for m in messages[position:])
                break
            if self.limiter.unlimited:
                slots = [time.monotonic()] * (len(messages) - position)
            else:
                reservation = self._limiter_call(functools.partial(self.limiter.try_reserve, len(messages) - position),
                                                 batch)
                if reservation is None:
                    continue  # the database failed: the loop releases the rest
                if isinstance(reservation, float):
                    pause(reservation)
                    continue
                slots = [reservation.slot_at(i) for i in range(reservation.count)]
            for slot_at in slots:
                running.append(asyncio.run_coroutine_threadsafe(call(messages[position], slot_at), loop))
                position += 1
        while running:
            settle_finished(SETTLE_EVERY_S)
        return finished

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
                return CallOutcome(message.send_id, "released")  # not handed to the provider: put back
            started = time.perf_counter()
            try:
                result = await self.provider.send(message)
            except ProviderRateLimited as exc:
                return CallOutcome(message.send_id, "rate_limited", error=str(exc), retry_after_s=exc.retry_after_s)
            except TransientChannelError as exc:
                return CallOutcome(message.send_id, "retrying", error=str(exc))
            except UnbuildableMessage as exc:
                return CallOutcome(message.send_id, "failed", error=str(exc), reason="message cannot be built")
            except PermanentChannelError as exc:
                return CallOutcome(message.send_id, "failed", error=str(exc))
            except Exception as exc:  # a provider bug must not lose the send: retry it, log it
                logger.exception("provider %s raised unexpectedly for send %d", self.provider.name, message.send_id)
                return CallOutcome(message.send_id, "retrying", error=f"{type(exc).__name__}: {exc}")
            finally:
                PROVIDER_LATENCY.labels(self.channel, self.provider.name).observe(time.perf_counter() - started)
        return CallOutcome(message.send_id, "sent", finished_at=utcnow(),
                           provider_message_id=result.provider_message_id, provider=result.provider)

    # -- settle -----------------------------------------------------------------------------------

    def _journal_answer(self, call: CallOutcome, by_id: dict[int, ClaimedSend], batch: _Batch) -> None:
        """On the event loop, as a provider call returns: its result into the journal (no fsync),
        so a kill -9 from now on cannot make the call go out again. A failure here is left to the
        slice, which journals what this did not."""
        result = self._result(by_id[call.send_id], call)
        try:
            seq = batch.me.journal.append([(result, batch.fallbacks.get(result.send.step_id or 0))])[0]
        except OSError as exc:
            self._journal_outage.failed(exc, logging.ERROR)
            return
        except Exception:  # never into the call's future: that would lose the whole slice's answers
            logger.exception("could not journal the result of %s send %d", self.channel, call.send_id)
            return
        batch.journaled[call.send_id] = (result, seq)

    def _settle_calls(self, calls: list[CallOutcome], by_id: dict[int, ClaimedSend], batch: _Batch) -> None:
        """Make the slice's answers durable (one fsync, before the database write; the ones not
        journaled at call time appended first), then try to write what is unwritten."""
        answered: list[tuple[Result, int | None]] = []
        unjournaled: list[Result] = []
        released: list[Result] = []
        for c in calls:
            known = batch.journaled.pop(c.send_id, None)
            if known is not None:
                answered.append(known)
            elif c.status == "released":
                released.append(self._result(by_id[c.send_id], c))
            else:
                unjournaled.append(self._result(by_id[c.send_id], c))
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
        batch.waits.extend(c.retry_after_s for c in calls if c.status == "rate_limited" and c.retry_after_s)
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
        batch.released.update(r.send.id for r in applied if r.outcome == "released")
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

    def _result(self, s: ClaimedSend, call: CallOutcome) -> Result:
        provider = self.provider.name
        if call.status == "sent":
            note = f"sent by the backup provider {call.provider}" if call.provider and call.provider != provider else None
            return Result(s, "sent", provider=call.provider or provider, provider_message_id=call.provider_message_id,
                          finished_at=call.finished_at, reason=note)
        if call.status == "rate_limited":
            wait_s = call.retry_after_s or 1.0
            return Result(s, "deferred", provider=provider, error=call.error,
                          reason=f"provider asked to wait {wait_s:g} s (429)",
                          until=utcnow() + dt.timedelta(seconds=wait_s))
        if call.status == "released":
            return Result(s, "released")
        if call.status == "failed":
            return Result(s, "failed", provider=provider, error=call.error, reason=call.reason or "provider refused")
        return Result(s, "retrying", provider=provider, error=call.error)

    def _count(self, results: Iterable[Result]) -> None:
        for r in results:
            status = _METRIC_STATUS.get(r.outcome)
            if status:
                SENDS.labels(self.channel, status).inc()


@dataclass
class _Batch:
    """One message's sends between their provider calls and the database."""

    me: ThisProcess
    fallbacks: dict[int, str]  # step id -> fallback channel
    halted: threading.Event = field(default_factory=threading.Event)  # the database failed: no new call
    unwritten: list[tuple[Result, int | None]] = field(default_factory=list)  # with their journal seq
    # send id -> its result and journal seq, journaled on the event loop as the call returned
    journaled: dict[int, tuple[Result, int]] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)  # Retry-After of 429s, for the limiter
    released: set[int] = field(default_factory=set)  # back to 'queued', to hand to the queue
    next_try_at: float = 0.0
    backoff_s: float = RETRY_FIRST_S


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


def _as_dt(value: object) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))
