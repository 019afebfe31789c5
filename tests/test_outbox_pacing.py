"""Channel pacing: the outbox relays a rate-limited channel only a few seconds of its rate beyond
what is already in flight on it, so its backlog waits in the database, not on its queue, while an
unlimited channel beside it is relayed whole."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import dramatiq
import pytest

from actors.outbox import PACING_WINDOW_S, batch_size, relay_planned_sends, window
from db.database import close_database, init_database
from db.migrate import migrate
from db.models import Send
from engine.sends import IN_FLIGHT
from ops.harness.daemon import DaemonProcess, base_env
from tests.support.rabbitmq import rabbitmq_queue_depths
from tests.support.sends import plan_sends
from tests.support.settings import make_settings
from tests.support.statements import StatementCounter
from tests.support.waiting import wait_until

RATE = 20  # sends per second on the slow channel
WINDOW = int(RATE * PACING_WINDOW_S)  # what the relay keeps in flight on it


class RecordingActor:
    """Stands for a channel actor: keeps the messages the relay publishes."""

    def __init__(self) -> None:
        self.messages: list[list[int]] = []

    def send(self, send_ids: list[int]) -> None:
        self.messages.append(list(send_ids))

    @property
    def sends(self) -> int:
        return sum(len(m) for m in self.messages)


def _actors() -> dict[str, RecordingActor]:
    return {channel: RecordingActor() for channel in make_settings().rates}


def _relay(actors: dict[str, RecordingActor], **env: str) -> int:
    settings = make_settings(**{"RATE_SMS": f"{RATE}/s", "RATE_EMAIL": "unlimited", **env})
    return relay_planned_sends(settings, cast(Mapping[str, dramatiq.Actor], actors))


def _queued(channel: str) -> list[int]:
    return [s.id for s in Send.select(Send.id).where(Send.channel == channel, Send.status == "queued")]


def test_the_window_is_a_few_seconds_of_the_rate_and_at_least_a_message() -> None:
    settings = make_settings(RATE_SMS="20/s", RATE_PUSH="1/m", RATE_EMAIL="unlimited")
    assert window(settings, "sms") == WINDOW
    assert window(settings, "push") == batch_size(settings, "push") == 1  # the floor: one message
    assert window(settings, "email") is None
    # a scheduler that ticks slowly gets two ticks' worth, so the channel never runs dry between passes
    assert window(make_settings(RATE_SMS="20/s", SCHEDULER_INTERVAL_S="10"), "sms") == 20 * 20


def test_a_slow_channel_is_relayed_a_window_at_a_time_beside_a_whole_unlimited_one(migrated_db: str) -> None:
    # Given a 5,000-send backlog on a 20/s channel and 1,500 due on an unlimited one
    plan_sends(5_000, "sms", "sms-")
    plan_sends(1_500, "email", "email-")
    actors = _actors()
    # When the relay runs once
    relayed = _relay(actors)
    # Then the slow channel got its window, in messages of about a second of its rate...
    assert actors["sms"].sends == WINDOW and len(_queued("sms")) == WINDOW
    assert all(len(m) <= RATE for m in actors["sms"].messages)
    # ...and the unlimited channel its whole backlog, in the same pass
    assert actors["email"].sends == 1_500 and len(_queued("email")) == 1_500
    assert relayed == WINDOW + 1_500
    counts = Counter((s.channel, s.status) for s in Send.select(Send.channel, Send.status))
    assert counts[("sms", "planned")] == 5_000 - WINDOW
    # When nothing has moved yet, the next pass adds nothing on the slow channel
    assert _relay(actors) == 0
    # When part of the window is sent, and then all of it, each pass tops it up to the window again,
    # in whole messages (a message holds a worker thread until its last slot: a few sends each in
    # many messages would park many threads)
    Send.update(status="sent").where(Send.id.in_(_queued("sms")[:25])).execute()
    assert _relay(actors) == RATE and len(_queued("sms")) == WINDOW - 5
    assert [len(m) for m in actors["sms"].messages] == [RATE] * (WINDOW // RATE + 1)
    Send.update(status="sending").where(Send.id.in_(_queued("sms")[:10])).execute()
    Send.update(status="retrying").where(Send.id.in_(_queued("sms")[:10])).execute()
    Send.update(status="sent").where(Send.id.in_(_queued("sms"))).execute()
    assert _relay(actors) == WINDOW - 20  # the sending and retrying ones still count against it
    # And every send went out at most once, oldest first
    relayed_ids = [i for m in actors["sms"].messages for i in m]
    assert len(relayed_ids) == len(set(relayed_ids)) == WINDOW + RATE + WINDOW - 20
    oldest = [s.id for s in Send.select(Send.id).where(Send.channel == "sms").order_by(Send.id)
              .limit(len(relayed_ids))]
    assert sorted(relayed_ids) == oldest


def test_a_window_held_by_retries_still_gets_what_room_is_left(migrated_db: str) -> None:
    # Given a 20/s channel whose window is mostly held by sends being sent or waiting for a retry
    # (a database outage put them there), none of its messages waiting on the queue
    plan_sends(500, "sms", "sms-")
    actors = _actors()
    _relay(actors)
    held = _queued("sms")
    Send.update(status="retrying").where(Send.id.in_(held[:30])).execute()
    Send.update(status="sending").where(Send.id.in_(held[30:45])).execute()
    Send.update(status="sent").where(Send.id.in_(held[45:])).execute()
    # When the relay runs, Then the 15 sends of room left go, though less than a message: a channel
    # whose queue is empty must not idle until its retries end (a whole-message rule alone stalled
    # a dispatch after a database outage)
    assert _relay(actors) == 15
    # And once one of its messages waits on the queue, the room left waits for a whole message
    Send.update(status="sent").where(Send.id.in_(held[:8])).execute()
    assert _relay(actors) == 0


def test_a_pass_costs_the_same_statements_whatever_the_backlog(migrated_db: str,
                                                               statements: StatementCounter) -> None:
    # Given a small backlog on a slow channel, relayed once
    plan_sends(10, "sms", "small-")
    actors = _actors()
    statements.count = 0
    _relay(actors, RATE_SMS="2/s")  # window 6 sends, in messages of 2
    small = statements.count
    Send.update(status="sent").execute()
    # When the backlog is 5,000 sends
    plan_sends(5_000, "sms", "large-")
    statements.count = 0
    _relay(actors, RATE_SMS="2/s")
    # Then the pass ran as many statements: the in-flight count and the due read are one each,
    # then one conditional UPDATE per message of 2 (PostgreSQL's pool logs a connection's return too)
    assert statements.count == small <= 2 + 3 + 1
    assert actors["sms"].sends == 12


@pytest.mark.slow
def test_a_slow_channels_queue_holds_its_window_while_its_backlog_drains(
        pg_url: str, amqp_url: str, rabbitmq_vhost: str, tmp_path: Path, daemons: list) -> None:
    init_database(pg_url)
    migrate()
    try:
        # Given a daemon with a 20/s channel and a 2,000-send backlog on it, unlimited email beside it
        plan_sends(2_000, "sms", "sms-")
        daemon = DaemonProcess(base_env(DATABASE_URL=pg_url, BROKER_URL=amqp_url, RATE_SMS=f"{RATE}/s",
                                        RATE_EMAIL="unlimited", THREADS="4"), tmp_path, "--processes", "1")
        daemons.append(daemon)
        daemon.start()
        plan_sends(300, "email", "email-")
        # When the backlog drains, RabbitMQ's sms queue never holds more than the window's messages,
        # and the database never shows more than the window in flight
        deepest = 0

        def drained_a_while() -> bool:
            nonlocal deepest
            deepest = max(deepest, rabbitmq_queue_depths(rabbitmq_vhost)["retentiond.sms"])
            assert Send.select().where(Send.channel == "sms", Send.status.in_(IN_FLIGHT)).count() <= WINDOW
            sent = Counter(s.channel for s in Send.select(Send.channel).where(Send.status == "sent"))
            return sent["sms"] >= WINDOW + RATE and sent["email"] == 300

        wait_until(drained_a_while, 30, "two windows of sms and every email sent", interval_s=0.05)
        print(f"\ndeepest sms queue: {deepest} message(s)")
        assert deepest <= WINDOW // RATE
        # And the rest of the backlog is still in the outbox, not on the queue
        assert Send.select().where(Send.channel == "sms", Send.status == "planned").count() > 1_000
        assert daemon.stop() == 0
    finally:
        close_database()


class _SlowRecorder:
    """Accepts every message after ``delay_s``, noting the order of the calls across channels."""

    name = "recording"

    def __init__(self, order: list[str], delay_s: float) -> None:
        self.order, self.delay_s = order, delay_s

    async def send(self, message):  # type: ignore[no-untyped-def]
        import asyncio

        from actors.providers import ProviderResult

        self.order.append(message.idempotency_key)
        await asyncio.sleep(self.delay_s)
        return ProviderResult(provider_message_id=f"slow-{message.send_id}")

    async def close(self) -> None:
        pass


def test_a_paced_channel_is_not_kept_waiting_behind_an_unlimited_backlog(stub_pipeline) -> None:  # type: ignore[no-untyped-def]
    # Given a worker busy with an unlimited email backlog (messages of 100, each call 50 ms), and an
    # sms window relayed after it (sms rate-limited, so paced)
    order: list[str] = []
    provider = _SlowRecorder(order, 0.05)
    pipeline = stub_pipeline({"sms": provider, "email": provider}, RATE_SMS="50/s", CONCURRENCY_EMAIL="8")
    plan_sends(400, "email", "e")
    relay_planned_sends(pipeline.settings, pipeline.actors)
    plan_sends(10, "sms", "s")
    relay_planned_sends(pipeline.settings, pipeline.actors)
    # When the worker drains both
    pipeline.wait_until_idle()
    # Then the sms went out before most of the email backlog: a paced channel's few messages go to
    # the next free worker thread instead of waiting behind every email message (its rate would
    # fall short otherwise)
    first_sms = min(order.index(f"s{i}") for i in range(10))
    assert Counter(key[0] for key in order) == {"e": 400, "s": 10}
    assert first_sms < 250, f"the first sms was call {first_sms} of {len(order)}"


class _OrderedActor(RecordingActor):
    """A channel actor noting, in a list shared across channels, which channel each publish was for."""

    def __init__(self, channel: str, order: list[str]) -> None:
        super().__init__()
        self.channel, self.order = channel, order

    def send(self, send_ids: list[int]) -> None:
        super().send(send_ids)
        self.order.append(self.channel)


def test_a_pass_tops_up_the_paced_channels_before_it_relays_an_unlimited_backlog(migrated_db: str) -> None:
    # Given an sms window due (20/s) beside 3,000 due emails (unlimited: 30 messages to publish)
    plan_sends(3_000, "email", "email-")
    plan_sends(500, "sms", "sms-")
    order: list[str] = []
    actors = {channel: _OrderedActor(channel, order) for channel in make_settings().rates}
    # When the relay runs once
    _relay(cast(dict[str, RecordingActor], actors))
    # Then every sms message went out before the first email one: publishing a large unlimited
    # backlog takes seconds, and a paced window (three seconds of its rate) must not wait for it
    assert order.count("sms") == WINDOW // RATE and order.count("email") == 30
    assert order.index("email") == WINDOW // RATE, order


def _email_steps_due(count: int) -> None:
    """``count`` contacts enrolled in a one-step email campaign, their step due now."""
    from db.models import Campaign, CampaignStep, Contact, Enrolment, utcnow

    campaign = Campaign.create(slug="news", name="News")
    CampaignStep.create(campaign=campaign.id, position=0, channel="email", subject="Hi", body="Hello", delay_s=0)
    for i in range(count):
        contact = Contact.create(external_id=f"c{i}", email=f"c{i}@example.com")
        Enrolment.create(contact=contact.id, campaign=campaign.id, status="active", next_position=0,
                         next_due_at=utcnow())


class _CountingActor(RecordingActor):
    """Notes, at each publish, how many sends of ``channel`` the outbox holds (planned so far)."""

    def __init__(self, channel: str) -> None:
        super().__init__()
        self.channel = channel
        self.planned_at_publish: list[int] = []

    def send(self, send_ids: list[int]) -> None:
        super().send(send_ids)
        self.planned_at_publish.append(Send.select().where(Send.channel == self.channel).count())


def test_a_scheduling_tick_tops_up_the_paced_channels_before_it_plans(migrated_db: str) -> None:
    # Given an sms window due, and 300 contacts' email steps due to be planned (planning thousands
    # takes seconds, longer than a paced channel's window lasts)
    from daemon.scheduler import Scheduler

    plan_sends(500, "sms", "sms-")
    _email_steps_due(300)
    sms = _CountingActor("email")  # notes the emails planned when each sms message goes
    actors = {**_actors(), "sms": sms}
    scheduler = Scheduler(make_settings(RATE_SMS=f"{RATE}/s", RATE_EMAIL="unlimited"),
                          cast(Mapping[str, dramatiq.Actor], actors))
    # When the scheduling tick runs
    scheduler.schedule()
    # Then the sms window was topped up before any email step was planned, and the emails planned
    # in the tick were relayed in it
    assert sms.planned_at_publish[0] == 0 and sms.sends == WINDOW
    assert actors["email"].sends == 300


def test_a_scheduling_tick_relays_each_planned_batch_before_it_plans_the_next(migrated_db: str) -> None:
    # Given 1,200 contacts' email steps due (three planning batches of 500)
    from daemon.scheduler import Scheduler

    _email_steps_due(1200)
    email = _CountingActor("email")
    actors = {**_actors(), "email": email}
    scheduler = Scheduler(make_settings(RATE_EMAIL="unlimited"), cast(Mapping[str, dramatiq.Actor], actors))
    # When the scheduling tick runs
    assert scheduler.schedule() == 1200 + 1200  # planned + relayed
    # Then the first emails were published when only the first batch was planned: sending starts
    # while the rest is planned (and a paced channel is topped up between batches)
    assert email.planned_at_publish[0] == 500 and email.sends == 1200, email.planned_at_publish
