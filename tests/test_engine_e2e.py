"""The outreach engine end to end, as a user runs it: a campaign file applied, contacts imported
and enrolled from a CSV, the daemon sending through Twilio and Postmark adapters to the provider
simulator (with injected 503s and 429s), on RabbitMQ + PostgreSQL and on SQLite + the in-process
broker. Then a kill -9 in the middle of a run: the sends of the killed workers are re-offered once
they stop beating, and results they had journaled are written by the next start, not sent again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from db.database import close_database, init_database
from db.models import Decision, Enrolment, Send
from engine.journal import SUFFIX, read_unsettled
from ops.harness.daemon import DaemonProcess, base_env
from ops.harness.simulator_process import SimulatorProcess
from tests.support.campaign_cli import ONE_STEP, prepare
from tests.support.waiting import wait_until

TWO_STEP = """\
slug: two-step
name: Two steps
trigger: manual
exit_on: [conversion]
steps:
  - channel: sms
    delay: 0s
    body: "Hi {{ contact.name }}, your offer: {{ link('https://example.com/offer') }}"
  - channel: email
    delay: 0s
    subject: "Still interested, {{ contact.name }}?"
    body: "Hello again {{ contact.name }}."
"""


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(tmp_path, latency_ms=20, error_rate=0.05, rate_429=0.02).start()
    yield sim
    sim.stop()


def engine_env(db_url: str, broker_url: str, simulator: SimulatorProcess, **extra: str) -> dict[str, str]:
    settings = {"DATABASE_URL": db_url, "BROKER_URL": broker_url, "RATE_SMS": "unlimited", "RATE_EMAIL": "unlimited",
                "DAILY_CAP": "0", "QUIET_HOURS": "off", "RETRY_MIN_BACKOFF_MS": "200", "RETRY_MAX_BACKOFF_MS": "2000",
                "MAX_RETRIES": "20", "CONCURRENCY_SMS": "128", "CONCURRENCY_EMAIL": "128",
                "PROVIDER_POSTMARK_BATCH_WAIT_MS": "500", **simulator.provider_env(), **extra}
    return base_env(**settings)


def run_two_step(db_url: str, broker_url: str, tmp_path: Path, daemons: list, simulator: SimulatorProcess,
                 *args: str) -> None:
    # Given a two-step campaign (sms, then email) and 2,000 contacts imported into it
    env = engine_env(db_url, broker_url, simulator)
    prepare(env, tmp_path, TWO_STEP, 2000, "two-step")
    # When the daemon runs against providers that fail 5% of calls and answer 429 to 2%
    daemons.append(DaemonProcess(env, tmp_path, *args).start())
    wait_until(lambda: simulator.stats()["received"] >= 4000, 240, "4,000 deliveries at the simulator",
               interval_s=0.5)
    init_database(db_url)
    try:
        wait_until(lambda: Send.select().where(Send.status == "sent").count() == 4000, 60, "4,000 sends recorded")
        stats = simulator.stats()
        print(f"\nsimulator: {stats}")
        # Then exactly 4,000 deliveries arrived, none twice, each send row is 'sent'...
        assert stats["received"] == 4000
        assert stats["duplicates"] == 0
        assert stats["by_channel"]["sms"] == 2000 and stats["by_channel"]["email"] == 2000
        assert Send.select().count() == 4000
        # ...every enrolment went through both steps...
        assert Enrolment.select().where(Enrolment.status == "completed").count() == 2000
        # ...and the injected failures were retried through, the 429s deferred, both on the record
        outcomes = {d.outcome for d in Decision.select(Decision.outcome).distinct()}
        assert {"sent", "retried", "deferred"} <= outcomes
    finally:
        close_database()
    assert daemons[-1].stop() == 0


@pytest.mark.slow
def test_two_step_campaign_on_rabbitmq_and_postgres(pg_url: str, amqp_url: str, tmp_path: Path, daemons: list,
                                                    simulator: SimulatorProcess) -> None:
    run_two_step(pg_url, amqp_url, tmp_path, daemons, simulator, "--processes", "2")


@pytest.mark.slow
def test_two_step_campaign_on_sqlite_and_the_in_process_broker(sqlite_url: str, tmp_path: Path, daemons: list,
                                                               simulator: SimulatorProcess) -> None:
    run_two_step(sqlite_url, "memory://", tmp_path, daemons, simulator)


@pytest.mark.slow
def test_kill_9_mid_run_loses_nothing(pg_url: str, amqp_url: str, tmp_path: Path, daemons: list) -> None:
    simulator = SimulatorProcess(tmp_path, latency_ms=200).start()
    try:
        env = engine_env(pg_url, amqp_url, simulator, HEARTBEAT_INTERVAL_S="1", RECONCILE_AFTER_S="5",
                         CONCURRENCY_SMS="64")
        prepare(env, tmp_path, ONE_STEP, 5000, "one-step")
        first = DaemonProcess(env, tmp_path, "--processes", "2", name="first")
        daemons.append(first.start())
        wait_until(lambda: simulator.stats()["received"] >= 1500, 120, "1,500 deliveries", interval_s=0.2)
        # When the daemon and its workers are killed outright, mid-run
        first.kill()
        init_database(pg_url)
        try:
            seen = [-1]

            def provider_quiet() -> bool:
                """No request arrived since the last look (0.5 s, over twice the provider's latency):
                the ones the workers wrote before dying have all been read."""
                received = simulator.stats()["received"]
                quiet, seen[0] = received == seen[0], received
                return quiet

            wait_until(provider_quiet, 30, "the provider to have read every request", interval_s=0.5)
            delivered_at_kill = seen[0]
            in_flight = Send.select().where(Send.status == "sending").count()
            written = {s.id for s in Send.select(Send.id).where(Send.status == "sent")}
            # results the provider gave that only the workers' journals hold: the restart writes them
            journaled = {e.result.send.id for path in (tmp_path / "var" / "journal").glob(f"*{SUFFIX}")
                         for e in read_unsettled(path) if e.result.outcome == "sent"}
            # delivered, but the answer never came back to a worker: the calls on the wire at the kill
            on_the_wire = delivered_at_kill - len(written | journaled)
            # Then a new daemon gets every send out, and repeats at most the calls on the wire
            second = DaemonProcess(env, tmp_path, "--processes", "2", name="second")
            daemons.append(second.start())
            wait_until(lambda: Send.select().where(Send.status == "sent").count() == 5000, 180,
                       "all 5,000 sends", interval_s=0.5)
            stats = simulator.stats()
            print(f"\nkill -9 after {delivered_at_kill} deliveries: {in_flight} send(s) claimed, "
                  f"{len(journaled - written)} answered and only journaled, {on_the_wire} on the wire; "
                  f"{stats['duplicates']} duplicate(s) at the provider, {stats['received']} received")
            assert stats["received"] - stats["duplicates"] == 5000
            # every answer that came back was journaled at once: what is left is at most the calls
            # the two workers may have in flight (CONCURRENCY_SMS each), and only those go out twice
            assert on_the_wire <= 2 * 64
            assert stats["duplicates"] <= on_the_wire
        finally:
            close_database()
        assert second.stop() == 0
    finally:
        simulator.stop()
