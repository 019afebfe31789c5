"""A send's statuses (ground/send_states.py) against what engine/sends.py really stores: from any
status a send can reach, any step of the daemon (relay, claim, settle, reconcile, dead letter, in
whatever order redeliveries, outages and dead workers bring them) leaves it in a SendStatus, along
the transitions the state table documents."""

from __future__ import annotations

import datetime as dt
import itertools

from db.models import Campaign, CampaignStep, Contact, Decision, Enrolment, Send, utcnow
from engine import sends
from engine.outcomes import ClaimedSend, Result
from ground.send_states import EFFECTS, Decided, Outcome, SendMetric, SendStatus

S = SendStatus
# What each step of the daemon does to a send in a given status (absent: it leaves the send alone).
TRANSITIONS: dict[str, dict[SendStatus, SendStatus]] = {
    "relay": {S.PLANNED: S.QUEUED},
    "publish failed": {S.QUEUED: S.PLANNED},
    "claim": {S.QUEUED: S.SENDING, S.RETRYING: S.SENDING, S.SENDING: S.SENDING},  # its own orphaned claim
    "message lost": {S.QUEUED: S.PLANNED, S.RETRYING: S.PLANNED},
    "worker died": {S.SENDING: S.PLANNED},
    "dead-lettered": {S.QUEUED: S.FAILED, S.RETRYING: S.FAILED},
    "settle sent": {S.SENDING: S.SENT},
    "settle failed": {S.SENDING: S.FAILED},
    "settle retrying": {S.SENDING: S.RETRYING},
    "settle released": {S.SENDING: S.QUEUED},  # never handed to the provider
    "settle deferred": {S.SENDING: S.PLANNED},  # a later due time
    "settle skipped": {S.SENDING: S.SKIPPED},
    "settle fell_back": {S.SENDING: S.SKIPPED},
}
_keys = itertools.count()


def _new_send(now: dt.datetime) -> int:
    n = next(_keys)
    campaign = Campaign.create(slug=f"states-{n}", name="C")
    step = CampaignStep.create(campaign=campaign.id, position=0, channel="sms", body="hi")
    contact = Contact.create(phone=f"+1201555{n:04d}")
    enrolment = Enrolment.create(contact=contact.id, campaign=campaign.id, status="waiting")
    ids = sends.plan([sends.NewSend(f"states-{n}", "sms", contact.id, campaign.id, step.id, enrolment.id,
                                    contact.phone, body="hi")], now)
    return ids[f"states-{n}"]


def _step(name: str, send_id: int, held: ClaimedSend | None, now: dt.datetime) -> ClaimedSend | None:
    """Run one daemon step on the send; returns the claim the worker holds afterwards."""
    if name == "relay":
        sends.enqueue([send_id], now)
    elif name == "publish failed":
        sends.unqueue([send_id])
    elif name == "claim":
        return (sends.claim("sms", [send_id], "worker-1", now) or [held])[0]
    elif name == "message lost":
        sends.requeue_lost(now + dt.timedelta(days=1))
    elif name == "worker died":
        sends.reoffer(["worker-1"], now - dt.timedelta(days=1), now)
    elif name == "dead-lettered":
        sends.fail_exhausted([send_id], now)
    elif held is not None:  # settle <outcome>, with the claim the worker holds
        outcome = Outcome(name.removeprefix("settle "))
        sends.settle([Result(held, outcome, reason="test", until=now + dt.timedelta(hours=1))], now,
                     claimant="worker-1")
    return held


def test_every_step_from_every_status_lands_on_a_documented_status(migrated_db: str) -> None:
    # Given, for each status a send can reach, a send brought there by the daemon's own steps
    # (found breadth-first from a freshly planned send, so every reachable status is tried)
    now = utcnow()
    paths: dict[SendStatus, list[str]] = {S.PLANNED: []}
    frontier = [S.PLANNED]
    while frontier:
        status = frontier.pop(0)
        for name in sorted(TRANSITIONS):
            # When one more step reaches a send in that status
            send_id, held = _new_send(now), None
            for earlier in paths[status]:
                held = _step(earlier, send_id, held, now)
            assert Send.get_by_id(send_id).status == status
            _step(name, send_id, held, now)
            stored = Send.get_by_id(send_id).status
            # Then it holds a SendStatus, the one the state table says
            assert stored in set(SendStatus), (name, status, stored)
            assert stored == TRANSITIONS[name].get(status, status), (name, status, stored)
            # ...and every decision written about it is a decision-log name
            assert {d.outcome for d in Decision.select().where(Decision.send == send_id)} <= set(Decided)
            if S(stored) not in paths:
                paths[S(stored)] = [*paths[status], name]
                frontier.append(S(stored))
    # ...and every status is one a send can reach
    assert set(paths) == set(SendStatus)


def test_every_metric_status_is_what_some_outcome_counts() -> None:
    # The sends counter's status label values (initialised at 0 for dashboards) are exactly those
    # an outcome increments: none missing, none that never moves.
    assert {e.metric for e in EFFECTS.values() if e.metric is not None} == set(SendMetric)
    assert Outcome.RATE_LIMITED not in EFFECTS  # a 429 is settled as a deferral
