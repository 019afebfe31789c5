"""Leases and periodic jobs: one holder at a time, take-over after a holder dies, and across
racing processes every tick of a job runs exactly once (the job history proves it)."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal
import time

import pytest

from daemon.jobs import Job, JobRunner
from db.database import close_database, init_database
from db.leases import hold_until, holder_of, renew, try_acquire
from db.models import JobRun, utcnow
from tests.support.waiting import wait_until


def test_a_lease_has_one_holder_until_it_expires(migrated_db: str) -> None:
    now = utcnow()
    assert try_acquire("tick", "a", 30, now)
    assert not try_acquire("tick", "b", 30, now + dt.timedelta(seconds=10))
    assert not try_acquire("tick", "a", 30, now + dt.timedelta(seconds=10))  # not even by its holder
    assert renew("tick", "a", 30, now + dt.timedelta(seconds=20))  # the holder extends it instead
    assert holder_of("tick", now + dt.timedelta(seconds=45)) == "a"
    # a holder that stops renewing loses it after the TTL
    assert try_acquire("tick", "b", 30, now + dt.timedelta(seconds=51))
    assert not renew("tick", "a", 30, now + dt.timedelta(seconds=52))
    assert hold_until("tick", "b", now + dt.timedelta(minutes=5))
    assert not try_acquire("tick", "a", 30, now + dt.timedelta(minutes=4))


def test_a_failing_job_is_recorded_and_runs_again_next_tick(migrated_db: str) -> None:
    runner = JobRunner("me")

    def boom() -> int:
        raise RuntimeError("no luck")
    assert runner.run_if_due(Job("flaky", 0.01, boom)) == 0
    run = JobRun.get()
    assert (run.job, run.instance, run.outcome, run.error) == ("flaky", "me", "error", "RuntimeError: no luck")
    time.sleep(0.02)  # the job's interval, not synchronisation: its next tick is due after it
    assert runner.run_if_due(Job("flaky", 0.01, lambda: 3)) == 3
    assert [r.outcome for r in JobRun.select().order_by(JobRun.id)] == ["error", "ok"]


INTERVAL_S = 0.5


def _race(url: str, name: str, seconds: float) -> None:
    init_database(url)
    runner = JobRunner(f"proc-{os.getpid()}")
    job = Job("race", INTERVAL_S, lambda: (time.sleep(0.05), 1)[1], ttl_s=5)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runner.run_if_due(job)
        time.sleep(0.01)
    close_database()


def test_four_processes_racing_run_each_tick_exactly_once(migrated_db: str) -> None:
    context = multiprocessing.get_context("spawn")
    seconds = 20 * INTERVAL_S
    racers = [context.Process(target=_race, args=(migrated_db, f"p{i}", seconds)) for i in range(4)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
        assert racer.exitcode == 0
    runs = list(JobRun.select().where(JobRun.job == "race").order_by(JobRun.started_at))
    starts = [r.started_at for r in runs]
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
    print(f"\n{len(runs)} runs by {len({r.instance for r in runs})} processes; gaps {min(gaps):.3f}-{max(gaps):.3f}s")
    # every tick ran, promptly (the racers poll every 10 ms)...
    assert len(runs) >= 15 and max(gaps) <= INTERVAL_S + 0.25
    # ...and exactly once: never two runs in one interval, never two at a time
    assert min(gaps) >= INTERVAL_S - 0.005
    assert all(a.finished_at <= b.started_at for a, b in zip(runs, runs[1:], strict=False))
    assert {r.outcome for r in runs} == {"ok"}


def _hold_forever(url: str) -> None:
    init_database(url)
    JobRunner("doomed").run_if_due(Job("long", 60, lambda: (time.sleep(600), 0)[1], ttl_s=2))


def test_another_instance_takes_over_within_the_ttl_after_a_kill_9(migrated_db: str) -> None:
    context = multiprocessing.get_context("spawn")
    holder = context.Process(target=_hold_forever, args=(migrated_db,))
    holder.start()
    wait_until(lambda: holder_of("long") == "doomed", 30, "the first holder")
    time.sleep(3)  # longer than the TTL: the lease stays held only because the holder renews it
    assert holder_of("long") == "doomed"
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    killed_at = time.monotonic()
    survivor = JobRunner("survivor")
    wait_until(lambda: survivor.run_if_due(Job("long", 60, lambda: 1, ttl_s=2)) == 1, 10, "the take-over")
    assert time.monotonic() - killed_at <= 2 + 1
    assert JobRun.select().where(JobRun.instance == "survivor", JobRun.outcome == "ok").count() == 1


def test_job_history_shows_in_stats(sqlite_url: str) -> None:
    from ops.harness.daemon import base_env, cli

    env = base_env(DATABASE_URL=sqlite_url)
    assert cli("migrate", env=env).returncode == 0
    init_database(sqlite_url)
    try:
        JobRunner("host-a:42").run_if_due(Job("reconciler", 15, lambda: 7))
    finally:
        close_database()
    result = cli("stats", env=env)
    assert result.returncode == 0
    assert "reconciler" in result.stdout and "host-a:42: ok, 7 item(s)" in result.stdout


@pytest.mark.slow
def test_two_daemons_on_one_postgres_tick_once_and_survive_a_kill_9(pg_url: str, amqp_url: str, tmp_path,  # type: ignore[no-untyped-def]
                                                                    daemons: list) -> None:
    from db.migrate import migrate
    from ops.harness.daemon import DaemonProcess, base_env

    init_database(pg_url)
    migrate()
    try:
        env = base_env(DATABASE_URL=pg_url, BROKER_URL=amqp_url, SCHEDULER_INTERVAL_S="0.5")
        a = DaemonProcess(env, tmp_path, "--processes", "2", name="a").start()
        b = DaemonProcess(env, tmp_path, "--processes", "2", name="b").start()
        daemons.extend([a, b])
        wait_until(lambda: JobRun.select().where(JobRun.job == "scheduling-tick").count() >= 20, 60, "20 ticks")
        # When the daemon that ran the last tick is killed outright
        last = JobRun.select().where(JobRun.job == "scheduling-tick").order_by(JobRun.started_at.desc()).first()
        victim, survivor = (a, b) if str(a.process.pid) in last.instance else (b, a)
        victim.kill()
        killed_at = utcnow()
        # Then the other one goes on ticking within the lease's TTL (here: at its next tick)
        wait_until(lambda: JobRun.select().where(JobRun.job == "scheduling-tick",
                                                 JobRun.started_at > killed_at).count() >= 4, 30, "ticks after the kill")
        runs = list(JobRun.select().where(JobRun.job == "scheduling-tick").order_by(JobRun.started_at))
        gaps = [(y.started_at - x.started_at).total_seconds() for x, y in zip(runs, runs[1:], strict=False)]
        instances = {r.instance for r in runs}
        print(f"\n{len(runs)} ticks by {len(instances)} daemon(s); gaps {min(gaps):.3f}-{max(gaps):.3f}s")
        assert min(gaps) >= 0.5 - 0.01  # never two runs of one tick
        assert all(x.finished_at <= y.started_at for x, y in zip(runs, runs[1:], strict=False))
        after = [r for r in runs if r.started_at > killed_at]
        assert {r.instance for r in after} == {r for r in instances if str(survivor.process.pid) in r}
        assert (after[0].started_at - killed_at).total_seconds() < 5
        assert survivor.stop() == 0
    finally:
        close_database()
