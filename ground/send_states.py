"""A send's words, each defined once: its statuses, what a claimed send can come to, what the
decision log and the ``retentiond_sends_total`` metric call each outcome.

Every transition of a send (engine/sends.py makes each one)::

    (new)             -> planned | failed   planned; failed at once on a template error
    planned           -> queued             the relay put it on its channel queue (back if the publish fails)
    queued | retrying -> sending            a worker claimed it
    sending           -> sent | failed | skipped | retrying    settled with its outcome
    sending           -> planned            deferred (quiet hours, a cooldown, a 429): later, no attempt spent
    sending           -> queued             released: never handed to the provider (shutdown, outage)
    queued | retrying -> planned            reconciled: its message was lost
    sending           -> planned            re-offered: its worker died mid-send
    queued | retrying -> failed             dead-lettered: retries exhausted
    failed            -> planned            re-queued by an operator (admin API), once its cause is mended
    planned           -> skipped            its campaign was archived (those on a queue still go)

StrEnum members compare equal to (and are stored as) their text, so the database keeps the same
values as before these enums existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class SendStatus(StrEnum):
    """``Send.status``."""

    PLANNED = "planned"  # in the outbox, waiting for its due time and the relay
    QUEUED = "queued"  # on its channel queue
    SENDING = "sending"  # claimed by a worker (``Send.claimed_by``), its provider call under way
    RETRYING = "retrying"  # a transient failure: its message is retried by Dramatiq
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"  # held back for good (caps, suppression, consent, no address, fell back)


CLAIMABLE = (SendStatus.QUEUED, SendStatus.RETRYING)  # a worker may claim these
FINISHED = (SendStatus.SENT, SendStatus.FAILED, SendStatus.SKIPPED)  # never change again


class Outcome(StrEnum):
    """What one claimed send came to: its provider call's answer, or the checks' verdict."""

    SENT = "sent"
    FAILED = "failed"  # permanent: never retried (the step's fallback channel tried, if any)
    RETRYING = "retrying"  # transient: the message is retried
    RATE_LIMITED = "rate_limited"  # a provider's 429: settled as DEFERRED, never stored as such
    RELEASED = "released"  # never handed to the provider (shutdown, database outage): back to queued
    DEFERRED = "deferred"  # back to the outbox with a later due time, no attempt spent
    SKIPPED = "skipped"
    FELL_BACK = "fell_back"  # skipped on its channel, a send on the step's fallback channel planned


class Decided(StrEnum):
    """``Decision.outcome``: what the decision log says happened to a send."""

    SENT = "sent"
    FAILED = "failed"
    RETRIED = "retried"
    DEFERRED = "deferred"
    SKIPPED = "skipped"
    FELL_BACK = "fell_back"
    REOFFERED = "reoffered"  # its worker died mid-send; offered again (at least once)
    REQUEUED = "requeued"  # failed, then put back in the outbox by an operator
    DEVICE_REMOVED = "device_removed"  # a push device the service said is gone left the contact (engine/devices.py)


class SendMetric(StrEnum):
    """The ``status`` label of ``retentiond_sends_total`` (contract: dashboards and alerts read it)."""

    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    RETRIED = "retried"
    DEFERRED = "deferred"


@dataclass(frozen=True)
class Effect:
    """What settling an outcome does."""

    status: SendStatus  # the send's status afterwards
    decision: Decided | None  # the decision-log row written (None: no row)
    metric: SendMetric | None  # the sends counter's label incremented (None: not counted)
    step_done: bool  # its enrolment moves on (unless a fallback send now carries the step)


EFFECTS: Mapping[Outcome, Effect] = {
    Outcome.SENT: Effect(SendStatus.SENT, Decided.SENT, SendMetric.SENT, step_done=True),
    Outcome.FAILED: Effect(SendStatus.FAILED, Decided.FAILED, SendMetric.FAILED, step_done=True),
    Outcome.RETRYING: Effect(SendStatus.RETRYING, Decided.RETRIED, SendMetric.RETRIED, step_done=False),
    Outcome.RELEASED: Effect(SendStatus.QUEUED, None, None, step_done=False),
    Outcome.DEFERRED: Effect(SendStatus.PLANNED, Decided.DEFERRED, SendMetric.DEFERRED, step_done=False),
    Outcome.SKIPPED: Effect(SendStatus.SKIPPED, Decided.SKIPPED, SendMetric.SKIPPED, step_done=True),
    Outcome.FELL_BACK: Effect(SendStatus.SKIPPED, Decided.FELL_BACK, SendMetric.SKIPPED, step_done=True),
}


class EnrolmentStatus(StrEnum):
    """``Enrolment.status``: where a contact is in a campaign."""

    ACTIVE = "active"  # its next step is due at ``next_due_at``
    WAITING = "waiting"  # its step's send is planned and not yet done
    PAUSED = "paused"  # its campaign is paused: no step is planned until it is resumed (then: active)
    COMPLETED = "completed"
    EXITED = "exited"


