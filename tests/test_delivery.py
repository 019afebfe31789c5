"""The thin slice, in process: a send row relayed to its channel actor reaches the provider once,
and its status and metric follow. A worker in the test process on Dramatiq's stub broker (and,
where the outcome holds on any broker, on RabbitMQ too); both database engines."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from actors.outbox import relay_planned_sends
from actors.providers import OutboundMessage, ProviderResult
from actors.providers.console import ConsoleProvider
from db.models import RateLimit, Send
from ground.errors import PermanentChannelError, ProviderRateLimited, TransientChannelError
from ground.metrics import SENDS
from tests.support.providers import ScriptedProvider
from tests.support.sends import enrolled_send, plan


def sent_total(channel: str, status: str) -> float:
    return SENDS.labels(channel, status)._value.get()


def test_a_planned_send_reaches_the_console_provider_once(pipeline) -> None:  # type: ignore[no-untyped-def]
    # Given a send written to the database as planned
    out = io.StringIO()
    p = pipeline({"sms": ConsoleProvider(stream=out)})
    before = sent_total("sms", "sent")
    send = plan("welcome-1", body="Hi Ada, your offer is inside")
    # When the outbox relays it and the worker drains the queue
    assert p.relay_and_wait() == 1
    # Then the console shows the rendered message, the row is sent, the metric counted it
    assert f"--- console sms send={send.id} key=welcome-1 to=+15550001111" in out.getvalue()
    assert "Hi Ada, your offer is inside" in out.getvalue()
    row = Send.get_by_id(send.id)
    assert (row.status, row.attempts, row.provider, row.provider_message_id) == ("sent", 1, "console", "console-welcome-1")
    assert row.finished_at is not None and row.queued_at is not None
    assert sent_total("sms", "sent") == before + 1


def test_a_redelivered_message_does_not_call_the_provider_again(stub_pipeline) -> None:  # type: ignore[no-untyped-def]
    provider = ScriptedProvider()
    p = stub_pipeline({"sms": provider})
    sends = [plan(f"k{i}") for i in range(3)]
    p.relay_and_wait()
    # When the same message arrives again (at-least-once delivery)
    p.actors["sms"].send([s.id for s in sends])
    p.broker.join("retentiond.sms")
    p.worker.join()
    # Then each send was handed to the provider exactly once
    assert provider.calls == Counter({"k0": 1, "k1": 1, "k2": 1})
    assert {s.status for s in Send.select()} == {"sent"}


def test_a_permanent_error_is_recorded_and_not_retried(pipeline) -> None:  # type: ignore[no-untyped-def]
    provider = ScriptedProvider(script={"+15550000000": [PermanentChannelError("invalid number")]})
    p = pipeline({"sms": provider})
    bad = plan("bad", recipient="+15550000000")
    good = plan("good")
    p.relay_and_wait()
    assert provider.calls == Counter({"bad": 1, "good": 1})
    bad_row, good_row = Send.get_by_id(bad.id), Send.get_by_id(good.id)
    assert (bad_row.status, bad_row.error) == ("failed", "invalid number")
    assert good_row.status == "sent"


def test_a_transient_error_is_retried_only_for_the_send_that_failed(pipeline) -> None:  # type: ignore[no-untyped-def]
    provider = ScriptedProvider(script={"+15550000002": [TransientChannelError("timeout"), TransientChannelError("502")]})
    p = pipeline({"sms": provider})
    flaky = plan("flaky", recipient="+15550000002")
    steady = [plan(f"steady{i}") for i in range(4)]
    p.relay_and_wait()
    # The flaky send went through on its third call; the others were never called twice
    assert provider.calls["flaky"] == 3
    assert all(provider.calls[s.idempotency_key] == 1 for s in steady)
    row = Send.get_by_id(flaky.id)
    assert (row.status, row.attempts, row.error) == ("sent", 3, None)


def test_exhausted_retries_dead_letter_the_message_and_fail_the_send(stub_pipeline) -> None:  # type: ignore[no-untyped-def]
    provider = ScriptedProvider(script={"+15550000003": [TransientChannelError("503")] * 10})
    p = stub_pipeline({"sms": provider}, MAX_RETRIES="2")
    doomed = plan("doomed", recipient="+15550000003")
    before = sent_total("sms", "failed")
    p.relay_and_wait()
    row = Send.get_by_id(doomed.id)
    assert (row.status, row.reason) == ("failed", "retries exhausted")
    assert provider.calls["doomed"] == 3  # the first try and two retries
    assert len(p.broker.dead_letters_by_queue["retentiond.sms"]) == 1
    assert sent_total("sms", "failed") == before + 1


def test_a_429_holds_the_whole_channel(stub_pipeline) -> None:  # type: ignore[no-untyped-def]
    provider = ScriptedProvider(script={"+15550000004": [ProviderRateLimited("429", retry_after_s=30)]})
    p = stub_pipeline({"sms": provider}, RATE_SMS="100/s")
    plan("limited", recipient="+15550000004")
    relay = relay_planned_sends(p.settings, p.actors)
    assert relay == 1
    # The channel's next free slot moved ~30 s into the future, for every process
    until = time.monotonic() + 10
    while time.monotonic() < until:
        tat = RateLimit.get_or_none(RateLimit.channel == "sms")
        if tat is not None and tat.tat > time.time() + 25:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the 429 did not push the channel's rate-limit state forward")


def test_channels_do_not_mix(pipeline) -> None:  # type: ignore[no-untyped-def]
    sms, email = ScriptedProvider(name="sms-p"), ScriptedProvider(name="email-p")
    p = pipeline({"sms": sms, "email": email})
    plan("s1", channel="sms")
    plan("e1", channel="email", recipient="ada@example.com")
    p.relay_and_wait()
    assert sms.calls == Counter({"s1": 1}) and email.calls == Counter({"e1": 1})
    assert {(s.idempotency_key, s.provider) for s in Send.select()} == {("s1", "sms-p"), ("e1", "email-p")}


# -- checks and progress through the actor ------------------------------------------------------


def test_no_consent_falls_back_to_email_and_the_step_completes(pipeline) -> None:  # type: ignore[no-untyped-def]
    from db.models import Decision, Enrolment

    sms, email = ScriptedProvider(name="sms-p"), ScriptedProvider(name="email-p")
    p = pipeline({"sms": sms, "email": email}, DAILY_CAP="0", QUIET_HOURS="off")
    send, enrolment = enrolled_send("sms", fallback="email", consent={"sms": False})
    p.relay_and_wait()  # the sms send: skipped, fallback planned
    p.relay_and_wait()  # the email fallback: sent
    assert sms.calls == Counter() and email.calls == Counter({f"e{enrolment.id}.0.email": 1})
    original = Send.get_by_id(send.id)
    assert (original.status, original.reason) == ("skipped", "fell back to email: no consent for sms")
    fallback = Send.get(Send.fallback_of == send.id)
    assert (fallback.channel, fallback.status, fallback.recipient) == ("email", "sent", "ada@example.com")
    assert Enrolment.get_by_id(enrolment.id).status == "completed"
    outcomes = [d.outcome for d in Decision.select().where(Decision.contact == send.contact_id).order_by(Decision.id)]
    assert outcomes == ["fell_back", "sent"]


def test_a_permanent_failure_falls_back_too(stub_pipeline) -> None:  # type: ignore[no-untyped-def]
    sms = ScriptedProvider(name="sms-p", script={"+12015550100": [PermanentChannelError("unreachable handset")]})
    email = ScriptedProvider(name="email-p")
    p = stub_pipeline({"sms": sms, "email": email}, DAILY_CAP="0", QUIET_HOURS="off")
    send, _ = enrolled_send("sms", fallback="email")
    p.relay_and_wait()
    p.relay_and_wait()
    assert Send.get_by_id(send.id).status == "failed"
    assert Send.get(Send.fallback_of == send.id).status == "sent"


def test_quiet_hours_defer_without_spending_an_attempt(stub_pipeline) -> None:  # type: ignore[no-untyped-def]
    from db.models import Decision, Enrolment

    sms = ScriptedProvider()
    # every hour of the day is quiet for this contact, so the send must wait
    p = stub_pipeline({"sms": sms}, DAILY_CAP="0", QUIET_HOURS="00:00-23:59")
    send, enrolment = enrolled_send("sms", timezone="Pacific/Auckland")
    p.relay_and_wait()
    row = Send.get_by_id(send.id)
    assert (row.status, row.attempts, row.deferrals) == ("planned", 0, 1)
    assert row.due_at > row.created_at
    assert sms.calls == Counter()
    assert Enrolment.get_by_id(enrolment.id).status == "waiting"
    decision = Decision.get(Decision.send == send.id)
    assert decision.outcome == "deferred" and "quiet hours" in decision.reason and decision.until == row.due_at


def test_a_sent_step_moves_the_enrolment_to_the_next_one(stub_pipeline) -> None:  # type: ignore[no-untyped-def]
    from db.models import CampaignStep, Enrolment

    p = stub_pipeline({"sms": ScriptedProvider()}, DAILY_CAP="0", QUIET_HOURS="off")
    send, enrolment = enrolled_send("sms")
    CampaignStep.create(campaign=send.campaign_id, position=1, channel="email", body="later", subject="s",
                        delay_s=3600)
    p.relay_and_wait()
    moved = Enrolment.get_by_id(enrolment.id)
    assert (moved.status, moved.next_position) == ("active", 1)
    assert 3590 <= (moved.next_due_at - Send.get_by_id(send.id).finished_at).total_seconds() <= 3610


def test_campaign_emails_carry_one_click_unsubscribe_headers(stub_pipeline) -> None:  # type: ignore[no-untyped-def]
    from db.models import UnsubscribeToken

    email = ScriptedProvider(name="email-p")
    p = stub_pipeline({"email": email}, DAILY_CAP="0", PUBLIC_URL="https://go.example.com")
    send, enrolment = enrolled_send("email")
    p.relay_and_wait()
    headers = email.headers[f"e{enrolment.id}.0"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = headers["List-Unsubscribe"].removeprefix("<https://go.example.com/u/").removesuffix(">")
    row = UnsubscribeToken.get_by_id(token)
    assert (row.contact_id, row.channel) == (send.contact_id, "email")


def test_results_are_written_as_calls_finish_not_when_the_whole_batch_ends(stub_pipeline) -> None:  # type: ignore[no-untyped-def]
    # Given one message carrying 15 sends on a channel limited to 10/s: its calls span ~1.4 s
    p = stub_pipeline({"sms": ScriptedProvider()}, RATE_SMS="10/s")
    ids = [Send.create(idempotency_key=f"r{i}", channel="sms", recipient="+15550001111", body="hi",
                       status="queued").id for i in range(15)]
    p.actors["sms"].send(ids)
    # When it runs, then the calls already made are on the record while the rest still wait their
    # slots (a kill -9 then repeats only what was on the wire, not the whole batch)
    seen: list[Counter] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        seen.append(Counter(s.status for s in Send.select(Send.status)))
        if seen[-1]["sent"] == 15:
            break
        time.sleep(0.02)
    assert seen[-1]["sent"] == 15
    assert any(0 < c["sent"] < 15 and c["sending"] for c in seen), seen[::10]


@dataclass
class SlowProvider(ScriptedProvider):
    delay_s: float = 0.3

    async def send(self, message: OutboundMessage) -> ProviderResult:
        await asyncio.sleep(self.delay_s)
        return await super().send(message)


def test_results_whose_write_fails_are_written_when_the_database_answers_again(  # type: ignore[no-untyped-def]
        stub_pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import peewee

    import actors.delivery
    from engine.workers import current

    # Given three sends in one message, called one at a time, and a database that refuses the
    # first two writes of their results (as if it were cut off, then came back)
    real_settle = actors.delivery.settle
    refused: list[int] = []

    def flaky_settle(results, now, **kwargs):  # type: ignore[no-untyped-def]
        if any(r.outcome == "sent" for r in results) and len(refused) < 2:
            refused.append(len(results))
            raise peewee.OperationalError("server closed the connection unexpectedly")
        return real_settle(results, now, **kwargs)

    monkeypatch.setattr(actors.delivery, "settle", flaky_settle)
    caplog.set_level(logging.INFO, logger="actors.delivery")
    provider = SlowProvider()
    p = stub_pipeline({"sms": provider}, CONCURRENCY_SMS="1")
    sends = [plan(f"w{i}") for i in range(3)]
    # When they are relayed and the worker drains the queue
    p.relay_and_wait()
    # Then every send went out exactly once and is recorded as sent: the answers were kept and
    # written once the database took them, and the send not yet called when the write failed was
    # handed back to the queue instead of being called in the middle of the outage
    assert provider.calls == Counter({"w0": 1, "w1": 1, "w2": 1})
    assert {Send.get_by_id(s.id).status for s in sends} == {"sent"}
    assert len(refused) == 2
    assert "handed 1 sms send(s) back to the queue" in caplog.text
    assert current().journal.pending == 0


@dataclass
class ClosingProvider:
    """Records whether the worker closed it, and on which thread's running loop."""

    name: str = "closing"
    closed_in_loop: bool = False

    async def send(self, message: OutboundMessage) -> ProviderResult:
        return ProviderResult(provider_message_id=f"c-{message.send_id}")

    async def close(self) -> None:
        self.closed_in_loop = asyncio.get_running_loop().is_running()


def test_a_stopping_worker_closes_its_providers_on_its_event_loop(stub_pipeline) -> None:  # type: ignore[no-untyped-def]
    # Given a worker whose sms and email go through providers holding sessions
    sms, email = ClosingProvider(), ClosingProvider()
    p = stub_pipeline({"sms": sms, "email": email})
    plan("close-1")
    assert p.relay_and_wait() == 1
    # When the worker stops
    p.close()
    # Then each provider was closed on the worker's event loop, before that loop stopped
    assert sms.closed_in_loop and email.closed_in_loop


def test_each_answer_is_journaled_once_as_its_call_returns(  # type: ignore[no-untyped-def]
        stub_pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.journal import Journal

    # Given a worker whose journal notes where each result is appended from
    real_append = Journal.append
    appended: list[tuple[int, bool]] = []

    def spy(journal, results):  # type: ignore[no-untyped-def]
        try:
            asyncio.get_running_loop()
            on_event_loop = True
        except RuntimeError:
            on_event_loop = False
        appended.extend((r.send.id, on_event_loop) for r, _ in results)
        return real_append(journal, results)

    monkeypatch.setattr(Journal, "append", spy)
    provider = ScriptedProvider(script={"+15550000001": [TransientChannelError("503")],
                                        "+15550000002": [PermanentChannelError("400")]})
    p = stub_pipeline({"sms": provider}, RETRY_MIN_BACKOFF_MS="10", RETRY_MAX_BACKOFF_MS="20")
    sends = [plan(f"j{i}", recipient=f"+1555000000{i}") for i in range(6)]
    # When they are relayed, some sent, one refused, one retried then sent
    p.relay_and_wait()
    # Then every answer the provider gave was journaled once, by the event loop as the call
    # returned (not later by the worker thread's slice), and everything is written
    assert sum(provider.calls.values()) == 7
    assert sorted(appended) == sorted([(s.id, True) for s in sends] + [(sends[1].id, True)])
    assert {Send.get_by_id(s.id).status for s in sends} == {"sent", "failed"}


def test_a_claim_not_yet_held_is_never_taken_for_an_orphan(stub_pipeline, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import threading

    from actors import delivery
    from db.database import db_session

    sender = stub_pipeline({}).actors["sms"].fn
    send = plan("race-1")
    Send.update(status="queued").where(Send.id == send.id).execute()
    # Given thread A whose claim is committed but not yet recorded as held by this process
    b_tried = threading.Event()
    real_hold = delivery._hold

    def slow_hold(claimed):  # type: ignore[no-untyped-def]
        b_tried.wait(2.0)
        real_hold(claimed)

    monkeypatch.setattr(delivery, "_hold", slow_hold)
    got: dict[str, list] = {}

    def claim(name: str) -> None:
        with db_session():
            got[name] = sender._claim([send.id], "this-process")

    a = threading.Thread(target=claim, args=("a",))
    a.start()
    deadline = time.monotonic() + 10
    while Send.get_by_id(send.id).status != "sending":
        assert time.monotonic() < deadline, "thread A never claimed"
        time.sleep(0.01)
    # When thread B of the same process claims the same send meanwhile (a redelivered message)
    b = threading.Thread(target=claim, args=("b",))
    b.start()
    b.join(0.5)
    b_tried.set()
    a.join(10)
    b.join(10)
    # Then only A has it: B did not take A's fresh claim for an orphan to send again
    try:
        assert [s.id for s in got["a"]] == [send.id]
        assert got["b"] == []
    finally:
        delivery._let_go(got.get("a", []) + got.get("b", []))
