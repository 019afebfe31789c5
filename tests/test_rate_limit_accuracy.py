"""Rate limits measured on a running daemon: a limited channel sends at its rate (±10% over ~10 s)
while another channel runs unthrottled, with one worker process, two, and two daemons on one
database. Measured from the time each provider call finished, as recorded in the send log."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.database import close_database, init_database
from db.migrate import migrate
from db.models import Send
from ops.harness.daemon import DaemonProcess, base_env
from tests.support.sends import plan_sends, status_counts
from tests.support.waiting import wait_until

RATE = 20  # sends per second on the limited channel
SMS_COUNT = 221  # 220 intervals: 11 s at 20/s
EMAIL_COUNT = 400




def achieved_rate(channel: str) -> tuple[float, float]:
    """(sends per second between the first and the last finished send, seconds that took)."""
    times = sorted(s.finished_at for s in Send.select(Send.finished_at)
                   .where(Send.channel == channel, Send.status == "sent"))
    span = (times[-1] - times[0]).total_seconds()
    return (len(times) - 1) / span, span


def run_and_measure(database_url: str, amqp_url: str, tmp_path: Path, daemons: list,
                    daemon_count: int, processes: int) -> None:
    init_database(database_url)
    migrate()
    try:
        env = base_env(DATABASE_URL=database_url, BROKER_URL=amqp_url, RATE_SMS=f"{RATE}/s",
                       RATE_EMAIL="unlimited", THREADS="4")
        for index in range(daemon_count):
            daemon = DaemonProcess(env, tmp_path, "--processes", str(processes), name=f"daemon{index}")
            daemons.append(daemon.start())
        # Given a backlog on the limited channel and on an unthrottled one
        plan_sends(SMS_COUNT, "sms", "sms-")
        plan_sends(EMAIL_COUNT, "email", "email-")
        wait_until(lambda: status_counts()["sent"] == SMS_COUNT + EMAIL_COUNT, 60, "every send")
        sms_rate, sms_span = achieved_rate("sms")
        email_rate, email_span = achieved_rate("email")
        print(f"\n{daemon_count} daemon(s) x {processes} process(es): sms {sms_rate:.2f}/s over {sms_span:.1f}s "
              f"(limit {RATE}/s, error {100 * (sms_rate - RATE) / RATE:+.1f}%); "
              f"email {email_rate:.0f}/s over {email_span:.2f}s (unlimited)")
        # Then the limited channel held its rate within 10%...
        assert RATE * 0.9 <= sms_rate <= RATE * 1.1
        # ...while the other channel was not held back by it
        assert email_rate > RATE * 3
        assert email_span < sms_span / 2
        for daemon in daemons:
            assert daemon.stop() == 0
    finally:
        close_database()


@pytest.mark.slow
def test_one_worker_process_holds_the_rate(pg_url: str, amqp_url: str, tmp_path: Path, daemons: list) -> None:
    run_and_measure(pg_url, amqp_url, tmp_path, daemons, daemon_count=1, processes=1)


@pytest.mark.slow
def test_two_worker_processes_share_the_rate_on_sqlite(sqlite_url: str, amqp_url: str, tmp_path: Path,
                                                        daemons: list) -> None:
    run_and_measure(sqlite_url, amqp_url, tmp_path, daemons, daemon_count=1, processes=2)


@pytest.mark.slow
def test_two_worker_processes_share_the_rate_on_postgres(pg_url: str, amqp_url: str, tmp_path: Path,
                                                          daemons: list) -> None:
    run_and_measure(pg_url, amqp_url, tmp_path, daemons, daemon_count=1, processes=2)


@pytest.mark.slow
def test_two_daemons_on_one_database_share_the_rate(pg_url: str, amqp_url: str, tmp_path: Path,
                                                     daemons: list) -> None:
    run_and_measure(pg_url, amqp_url, tmp_path, daemons, daemon_count=2, processes=2)
