"""A database outage during sends repeats nothing and stalls nothing: under a real daemon whose
PostgreSQL is cut off by a TCP proxy mid-dispatch, every result the provider returned is written
once the database is back (or after a restart, from the worker's journal), and the sends claimed
but not yet called go back to the queue at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.database import close_database, init_database
from db.models import Send
from engine.journal import SUFFIX, read_unsettled
from ops.harness.daemon import DaemonProcess, base_env
from ops.harness.simulator_process import SimulatorProcess
from ops.harness.tcp_proxy import TcpProxy
from tests.support.campaign_cli import ONE_STEP, prepare
from tests.support.services import POSTGRES
from tests.support.waiting import wait_until

OUTAGE_S = 15.0  # the length of the cut in the issue: the stimulus, not a synchronisation
SENDS = 300


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(POSTGRES)
    yield proxy
    proxy.close()


def outage_env(pg_url: str, amqp_url: str, proxy: TcpProxy, simulator: SimulatorProcess, **extra: str) -> dict[str, str]:
    """Default timeouts, retries and claim timeout; only what the scenario needs: the database
    behind the proxy, the simulator as provider, sms at 50/s so a dispatch lasts seconds, and no
    daily cap or quiet hours to hold sends back."""
    proxied = pg_url.replace(f"{POSTGRES[0]}:{POSTGRES[1]}", proxy.url_host_port())
    return base_env(DATABASE_URL=proxied, BROKER_URL=amqp_url, RATE_SMS="50/s", DAILY_CAP="0", QUIET_HOURS="off",
                    **simulator.provider_env(), **extra)


def sent_count() -> int:
    return int(Send.select().where(Send.status == "sent").count())


@pytest.mark.slow
def test_a_database_cut_during_dispatch_repeats_nothing_and_recovers_at_once(
        pg_url: str, amqp_url: str, tmp_path: Path, daemons: list, pg_proxy: TcpProxy) -> None:
    simulator = SimulatorProcess(tmp_path, latency_ms=200).start()
    try:
        # Given a one-step sms campaign with a few hundred contacts, a provider answering in 200 ms,
        # and a daemon (2 worker processes, default timeouts) whose PostgreSQL is behind a proxy
        env = outage_env(pg_url, amqp_url, pg_proxy, simulator)
        prepare(env, tmp_path, ONE_STEP, SENDS, "one-step")
        daemon = DaemonProcess(env, tmp_path, "--processes", "2")
        daemons.append(daemon.start())
        wait_until(lambda: simulator.stats()["received"] >= 60, 60, "the dispatch to start", interval_s=0.05)

        # When the database is away for 15 s in the middle of the dispatch
        pg_proxy.cut()
        time.sleep(OUTAGE_S)
        at_cut_end = simulator.stats()["received"]
        pg_proxy.restore()
        back = time.monotonic()

        # Then every send is delivered within 30 s of the database's return, none twice
        init_database(pg_url)
        try:
            wait_until(lambda: sent_count() == SENDS, 30, f"all {SENDS} sends recorded as sent", interval_s=0.25)
            recovered_s = time.monotonic() - back
            stats = simulator.stats()
            print(f"\ndatabase cut {OUTAGE_S:.0f} s: {at_cut_end} delivered at its end, all {SENDS} sent "
                  f"{recovered_s:.1f} s after its return; {stats['duplicates']} duplicate(s), "
                  f"{stats['received']} received")
            assert stats["duplicates"] == 0
            assert stats["received"] == SENDS
            assert Send.select().where(Send.status != "sent").count() == 0
        finally:
            close_database()
        assert daemon.stop() == 0
    finally:
        simulator.stop()


def journaled_sent(journal_dir: Path) -> set[int]:
    """Sends whose 'sent' result sits in a worker's journal, not marked written."""
    return {e.result.send.id for path in journal_dir.glob(f"*{SUFFIX}") for e in read_unsettled(path)
            if e.result.outcome == "sent"}


@pytest.mark.slow
def test_results_journaled_during_an_outage_survive_a_kill_9_and_are_not_sent_again(
        pg_url: str, amqp_url: str, tmp_path: Path, daemons: list, pg_proxy: TcpProxy) -> None:
    simulator = SimulatorProcess(tmp_path, latency_ms=200).start()
    try:
        # Given a daemon dispatching a few hundred sms, whose database is cut off mid-dispatch
        env = outage_env(pg_url, amqp_url, pg_proxy, simulator, HEARTBEAT_INTERVAL_S="1")
        prepare(env, tmp_path, ONE_STEP, SENDS, "one-step")
        first = DaemonProcess(env, tmp_path, "--processes", "2", name="first")
        daemons.append(first.start())
        wait_until(lambda: simulator.stats()["received"] >= 60, 60, "the dispatch to start", interval_s=0.05)
        pg_proxy.cut()
        init_database(pg_url)  # the test's own connection does not go through the proxy
        try:
            # ...so that every result the provider gave since is in the workers' journals only
            journal_dir = tmp_path / "var" / "journal"

            seen = [-1]

            def accounted() -> bool:
                """No call finished since the last look (0.5 s, over twice the provider's latency:
                nothing left on the wire), and each one is written or journaled."""
                received = simulator.stats()["received"]
                quiet, seen[0] = received == seen[0], received
                written = {s.id for s in Send.select(Send.id).where(Send.status == "sent")}
                return quiet and len(written | journaled_sent(journal_dir)) == received

            wait_until(accounted, 20, "every delivery written or journaled, none on the wire", interval_s=0.5)
            journaled = journaled_sent(journal_dir)
            assert journaled, "no result waited in a journal when the daemon was killed"
            # When the daemon is killed outright, the database comes back, and a new daemon starts
            first.kill()
            pg_proxy.restore()
            second = DaemonProcess(env, tmp_path, "--processes", "2", name="second")
            daemons.append(second.start())
            # Then the journaled results are written, not sent again, and every send goes out once
            wait_until(lambda: sent_count() == SENDS, 60, f"all {SENDS} sends recorded as sent", interval_s=0.25)
            stats = simulator.stats()
            print(f"\nkill -9 with {len(journaled)} result(s) only in the journal: {stats['duplicates']} "
                  f"duplicate(s), {stats['received']} received")
            assert stats["duplicates"] == 0
            assert stats["received"] == SENDS
            assert not any(read_unsettled(path) for path in journal_dir.glob(f"*{SUFFIX}"))
        finally:
            close_database()
        assert second.stop() == 0
    finally:
        simulator.stop()
