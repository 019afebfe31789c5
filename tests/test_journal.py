"""The journal of provider results not yet written (engine/journal.py), and the reconciler telling a
dead worker from a slow database (engine/workers.py): what a restart writes, what it leaves alone."""

from __future__ import annotations

import datetime as dt
import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from db.models import Decision, Send, WorkerHeartbeat, utcnow
from engine.journal import Journal, apply_entries, read_unsettled, replay_orphans
from engine.outcomes import Result
from engine.reconciler import reconcile
from engine.workers import beat
from ops.harness.daemon import REPO
from tests.support.results import claimed, sent
from tests.support.settings import make_settings


def sending_row(key: str, claimant: str | None, claimed_at: dt.datetime | None = None) -> Send:
    return Send.create(idempotency_key=key, channel="sms", status="sending", recipient="+15550001111", body="hello",
                       claimed_by=claimant, claimed_at=claimed_at or utcnow(), attempts=1)


# -- the file ---------------------------------------------------------------------------------------


def test_unsettled_results_are_read_back_without_addresses_or_bodies(tmp_path: Path) -> None:
    # Given a worker that journaled three results and wrote one of them to the database
    journal = Journal(tmp_path, "host:1:aa")
    seqs = journal.record([(sent(1), None), (sent(2), "email"), (Result(claimed(3), "failed", error="refused"), None)])
    journal.settled(seqs[:1])
    # When the file is read back (as a replay after a crash would)
    assert journal.path is not None
    entries = read_unsettled(journal.path)
    # Then the two unwritten results come back, whole, with their claimant and fallback channel...
    assert [(e.result.send.id, e.result.outcome, e.by, e.fallback) for e in entries] == [
        (2, "sent", "host:1:aa", "email"), (3, "failed", "host:1:aa", None)]
    assert entries[0].result.provider_message_id == "SM2" and entries[1].result.error == "refused"
    assert entries[0].result.send.due_at == sent(2).send.due_at.replace(microsecond=entries[0].result.send.due_at.microsecond)
    # ...and the file holds no address and no message text
    text = journal.path.read_text()
    assert "+1555" not in text and "hello" not in text
    journal.close()


def test_the_file_is_emptied_once_everything_is_written_and_removed_at_a_clean_stop(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "host:1:bb")
    seqs = journal.record([(sent(1), None), (sent(2), None)])
    assert journal.path is not None and journal.path.stat().st_size > 0
    journal.settled(seqs)
    assert journal.path.stat().st_size == 0 and journal.pending == 0
    journal.record([(sent(3), None)])  # appends from the start again
    assert [e.result.send.id for e in read_unsettled(journal.path)] == [3]
    journal.settled([3])
    journal.close()
    assert not journal.path.exists()


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    # Given a journal whose writer died in the middle of a line
    journal = Journal(tmp_path, "host:1:cc")
    journal.record([(sent(1), None), (sent(2), None)])
    assert journal.path is not None
    with journal.path.open("a") as fh:
        fh.write(json.dumps({"seq": 3, "by": "host:1:cc", "result": {"send": {"id": 3}}})[:25])
    # Then the complete lines are read, the torn one skipped
    assert [e.result.send.id for e in read_unsettled(journal.path)] == [1, 2]
    journal.close()


def test_a_live_workers_journal_is_left_alone(tmp_path: Path) -> None:
    live = Journal(tmp_path, "host:1:dd")
    live.record([(sent(1), None)])
    replayed: list[int] = []
    assert replay_orphans(tmp_path, lambda entries: replayed.append(len(entries)) or 0) == 0
    assert replayed == [] and live.path is not None and live.path.exists()
    live.close()


# -- replay into the database ----------------------------------------------------------------------


def test_a_replay_writes_the_results_of_a_dead_worker_once(migrated_db: str, tmp_path: Path) -> None:
    # Given two sends a worker called, whose results it journaled but never wrote before dying
    a, b = sending_row("a", "host:9:dead"), sending_row("b", "host:9:dead")
    dead = Journal(tmp_path, "host:9:dead")
    dead.record([(Result(claimed(a.id), "sent", provider="twilio", provider_message_id="SMa"), None),
                 (Result(claimed(b.id), "failed", provider="twilio", error="invalid number"), None)])
    dead.close()  # the process is gone: its lock with it, its file stays
    assert dead.path is not None and dead.path.exists()
    entries = read_unsettled(dead.path)
    # When a new worker replays the journals of stopped workers
    assert replay_orphans(tmp_path) == 2
    # Then each send has its outcome and one decision, and the file is gone
    statuses = {s.idempotency_key: (s.status, s.provider_message_id) for s in Send.select()}
    assert statuses == {"a": ("sent", "SMa"), "b": ("failed", None)}
    assert Decision.select().count() == 2
    assert not dead.path.exists()
    # ...and replaying the same results again changes nothing (idempotent)
    assert apply_entries(entries) == 0
    assert Decision.select().count() == 2


def test_a_replay_leaves_a_send_that_another_worker_took_since(migrated_db: str, tmp_path: Path) -> None:
    # Given a dead worker's journaled result for a send that was re-offered and claimed by another
    row = sending_row("c", "host:2:alive")
    dead = Journal(tmp_path, "host:9:dead")
    dead.record([(Result(claimed(row.id), "retrying", error="503"), None)])
    dead.close()
    # When the journal is replayed
    assert replay_orphans(tmp_path) == 0
    # Then the other worker's claim stands
    assert Send.get_by_id(row.id).status == "sending"
    assert Send.get_by_id(row.id).claimed_by == "host:2:alive"


# -- the reconciler: dead worker or slow database --------------------------------------------------


def test_claims_of_a_live_worker_are_not_re_offered_after_a_database_outage(migrated_db: str) -> None:
    settings = make_settings(HEARTBEAT_INTERVAL_S="5", CLAIM_TIMEOUT_S="900")
    t0 = utcnow() - dt.timedelta(seconds=120)
    # Given two workers beating every 5 s, then a 60 s database outage during which neither can
    for second in range(0, 30, 5):
        beat("w1", t0 + dt.timedelta(seconds=second), t0)
        beat("w2", t0 + dt.timedelta(seconds=second + 2), t0)
    row = sending_row("d", "w2", claimed_at=t0 + dt.timedelta(seconds=20))
    back = t0 + dt.timedelta(seconds=85)
    # When the database returns and w1 beats first, the reconciler running right after it...
    beat("w1", back, back)
    assert reconcile(settings, back + dt.timedelta(seconds=1)).reclaimed == 0
    # ...or w1 has beaten for 10 s while w2 is still catching up
    beat("w1", back + dt.timedelta(seconds=10), back)
    assert reconcile(settings, back + dt.timedelta(seconds=11)).reclaimed == 0
    # Then w2's send is still its own
    assert Send.get_by_id(row.id).status == "sending"


def test_claims_of_a_killed_worker_are_re_offered_three_beats_later(migrated_db: str) -> None:
    settings = make_settings(HEARTBEAT_INTERVAL_S="2", CLAIM_TIMEOUT_S="900")
    t0 = utcnow() - dt.timedelta(seconds=60)
    # Given a worker killed right after claiming two sends, and one without a claimant (older
    # daemon), claimed a minute ago
    beat("dead", t0, t0)
    mine = [sending_row(f"e{i}", "dead", claimed_at=t0).id for i in range(2)]
    legacy = sending_row("legacy", None, claimed_at=t0).id
    # When its replacement beats without a break for more than 3 intervals (6 s)
    for second in range(0, 10, 2):
        beat("new", t0 + dt.timedelta(seconds=second + 1), t0 + dt.timedelta(seconds=1))
    report = reconcile(settings, t0 + dt.timedelta(seconds=10))
    # Then the dead worker's sends are offered again, the one without a claimant waits for CLAIM_TIMEOUT_S
    assert report.reclaimed == 2
    assert {s.id: s.status for s in Send.select()} == {mine[0]: "planned", mine[1]: "planned", legacy: "sending"}
    assert WorkerHeartbeat.select().count() == 2


# -- appended at call time, fsync'd in groups -------------------------------------------------------

KILLED_AT_CALL_TIME = """
import os, signal, sys
from engine.journal import Journal
from tests.support.results import sent

journal = Journal(sys.argv[1], "host:7:killed")
journal.append([(sent(42), None)])  # as the provider call returns: no fsync yet
os.kill(os.getpid(), signal.SIGKILL)  # before the slice's fsync and database write
"""


def test_a_result_appended_at_call_time_survives_a_kill_9_before_its_fsync(tmp_path: Path) -> None:
    # Given a worker that journaled one answer the moment its provider call returned, and was
    # killed -9 before the slice's fsync and database write
    worker = subprocess.run([sys.executable, "-c", KILLED_AT_CALL_TIME, str(tmp_path)], cwd=REPO,
                            capture_output=True, timeout=60)
    assert worker.returncode == -signal.SIGKILL, worker.stderr.decode()
    # When the journals of stopped workers are replayed
    replayed: list[tuple[int, str, str]] = []
    assert replay_orphans(tmp_path, lambda entries: replayed.extend(
        (e.result.send.id, e.result.outcome, e.by) for e in entries) or len(entries)) == 1
    # Then the answer is there, to be written instead of sent again
    assert replayed == [(42, "sent", "host:7:killed")]


def test_a_truncation_never_drops_a_result_another_thread_just_appended(tmp_path: Path) -> None:
    # Given the event loop appending answers one by one while a worker thread settles them and
    # the file is emptied each time nothing is pending
    journal = Journal(tmp_path, "host:1:race")
    assert journal.path is not None
    appended: queue.Queue[int | None] = queue.Queue()

    def event_loop() -> None:
        try:
            for i in range(2000):
                appended.put(journal.append([(sent(i), None)])[0])
        finally:
            appended.put(None)

    def settler() -> None:
        while (seq := appended.get()) is not None:
            if seq % 3:  # the others stay unwritten, as if their database write had failed
                journal.settled([seq])
            if seq % 50 == 0:
                journal.sync()

    threads = [threading.Thread(target=event_loop), threading.Thread(target=settler)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then every result not settled is still in the file, and only those
    assert {e.seq for e in read_unsettled(journal.path)} == {s for s in range(1, 2001) if s % 3 == 0}
    assert journal.pending == len(range(3, 2001, 3))
    journal.close()
