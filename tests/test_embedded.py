"""The embedded default (SQLite + ``memory://``) runs in two processes: the main one keeps the side
server, one worker process owns the in-memory queues, the worker threads, the scheduler and the
event processor (daemon/embedded.py). Seen from outside: leads posted to the side server are sent
without waiting for a scheduler tick (the wake crosses the process boundary), and a worker process
killed outright is replaced, the sends its memory held offered again, none sent twice."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from db.database import close_database, init_database
from db.models import Campaign, CampaignStep, InboundEvent
from ops.harness.daemon import DaemonProcess, base_env, cli
from ops.harness.signing import STANDARD_SECRET
from tests.support.sends import console_keys, plan_sends, status_counts
from tests.support.waiting import wait_until
from tests.support.webhooks import fire


def _lead(i: int) -> dict:
    return {"type": "contact.upsert",
            "data": {"external_id": f"lead{i}", "email": f"lead{i}@example.com", "campaign": "welcome"}}


def _worker_children(pid: int) -> list[int]:
    """The processes ``pid`` spawned to run code of ours (not multiprocessing's resource tracker)."""
    found = subprocess.run(["pgrep", "-P", str(pid), "-f", "spawn_main"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def test_leads_are_sent_from_the_worker_process_without_waiting_for_a_tick(tmp_path: Path, daemons: list) -> None:
    # Given the embedded default with a scheduler tick once an hour (so only the side server's wake
    # can start the event processor), and a one-step email campaign
    env = base_env(SOURCE_APP_SECRET=STANDARD_SECRET, SCHEDULER_INTERVAL_S="3600")
    assert cli("migrate", env=env, cwd=tmp_path).returncode == 0
    init_database("sqlite:///" + str(tmp_path / "var" / "retentiond.db"))
    try:
        campaign = Campaign.create(slug="welcome", name="Welcome")
        CampaignStep.create(campaign=campaign.id, position=0, channel="email", subject="Hi", body="Hello", delay_s=0)
        daemon = DaemonProcess(env, tmp_path)
        daemons.append(daemon.start())
        assert daemon.process is not None
        # Then the daemon is two processes: the side server's, and one worker process
        assert "embedded: 1 worker process" in daemon.stderr()
        workers = re.findall(r"worker 0 \(pid (\d+)\) started with \d+ threads, the in-memory queues", daemon.stderr())
        assert [int(w) for w in workers] == _worker_children(daemon.process.pid)
        # When 50 leads are posted
        answered = asyncio.run(fire(daemon.port, 50, 8, "lead", event=_lead))
        assert Counter(answered.values()) == {202: 50}
        # Then each is sent within seconds, not at the next tick an hour away
        wait_until(lambda: status_counts()["sent"] == 50, 15, "the 50 leads' emails")
        assert daemon.stop() == 0
    finally:
        close_database()


@pytest.mark.slow
def test_a_killed_embedded_worker_process_is_replaced_and_its_queued_sends_go_out_once(
        tmp_path: Path, daemons: list) -> None:
    # Given the embedded default sending a paced sms backlog at 10/s through one worker thread, so
    # that sends wait in the worker process's in-memory queue
    env = base_env(RATE_SMS="10/s", PROVIDER_CONSOLE_DELAY_MS="100", HEARTBEAT_INTERVAL_S="1",
                   SOURCE_APP_SECRET=STANDARD_SECRET)
    assert cli("migrate", env=env, cwd=tmp_path).returncode == 0
    daemon = DaemonProcess(env, tmp_path, "--threads", "1")
    daemons.append(daemon.start())
    init_database("sqlite:///" + str(tmp_path / "var" / "retentiond.db"))
    try:
        plan_sends(60)
        wait_until(lambda: status_counts()["sent"] >= 10 and status_counts()["queued"] >= 10, 30,
                   "sends going out with messages waiting in memory")
        # When the worker process is killed outright (the side server's process stays)
        (worker,) = re.findall(r"worker 0 \(pid (\d+)\) started", daemon.stderr())
        subprocess.run(["kill", "-9", worker], check=True)
        # Then the side server still answers webhooks at once (a wake signal the dead process was
        # waiting on once froze it for good), and they are processed once a new worker is there
        answered = asyncio.run(asyncio.wait_for(fire(daemon.port, 20, 4, "after-kill"), 15))
        assert Counter(answered.values()) == {202: 20}
        # And the supervisor starts another worker, which offers the lost queue's sends again at once
        wait_until(lambda: "restarting it" in daemon.stderr(), 15, "the supervisor to notice")
        wait_until(lambda: status_counts()["sent"] == 60, 60, "the whole backlog")
        assert "send(s) queued in a previous run's memory offered again" in daemon.stderr()
        wait_until(lambda: InboundEvent.select().where(InboundEvent.status == "processed").count() == 20, 15,
                   "the 20 webhooks processed by the new worker")
        assert daemon.stop() == 0
    finally:
        close_database()
    # And none went out twice (the console provider prints each key it sends)
    keys = console_keys(daemon)
    assert len(keys) == 60 and set(keys.values()) == {1}
