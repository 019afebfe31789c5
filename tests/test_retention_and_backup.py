"""Retention cleanup (a dry run counts what a real run deletes) and backup + restore round trips."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from db.backup import backup, restore
from db.database import close_database, init_database
from db.migrate import migrate
from db.models import Contact, Decision, InboundEvent, JobRun, Send, utcnow
from engine.retention import cleanup
from ops.harness.daemon import base_env, cli
from tests.support.settings import make_settings

NOW = dt.datetime(2026, 11, 24, 12, 0)


def ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


def seed() -> None:
    ada = Contact.create(email="ada@example.com")
    for i, (status, age) in enumerate([("sent", 40), ("failed", 35), ("skipped", 31), ("sent", 10), ("planned", 60)]):
        send = Send.create(idempotency_key=f"s{i}", channel="sms", contact=ada.id, status=status,
                           finished_at=ago(age) if status != "planned" else None, created_at=ago(age))
        Decision.create(send=send.id, contact=ada.id, outcome=status, created_at=ago(age))
    for i, (status, age) in enumerate([("processed", 100), ("pending", 100), ("unmappable", 95), ("processed", 5)]):
        InboundEvent.create(source="app", event_id=f"e{i}", payload="{}", status=status, received_at=ago(age))
    for age in (45, 31, 2):
        JobRun.create(job="tick", instance="x", started_at=ago(age), finished_at=ago(age), outcome="ok")


def test_a_dry_run_counts_exactly_what_a_real_run_deletes(migrated_db: str) -> None:
    seed()
    settings = make_settings()
    dry = cleanup(settings, NOW, dry_run=True)
    assert dict(dry) == {"decision log": 4, "send log": 3, "inbound events": 2, "job runs": 2, "ops alerts": 0}
    assert Send.select().count() == 5  # nothing deleted by the dry run
    real = cleanup(settings, NOW)
    assert real == dry
    assert sorted(s.status for s in Send.select()) == ["planned", "sent"]  # the recent and the unfinished stay
    assert {e.status for e in InboundEvent.select()} == {"pending", "processed"}
    assert cleanup(settings, NOW, dry_run=True) == [(name, 0) for name, _ in dry]


def test_cli_cleanup_dry_run(sqlite_url: str) -> None:
    env = base_env(DATABASE_URL=sqlite_url)
    assert cli("migrate", env=env).returncode == 0
    result = cli("cleanup", "--dry-run", env=env)
    assert result.returncode == 0 and "send log         would delete 0" in result.stdout


def test_sqlite_backup_and_restore_round_trip(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    init_database(url)
    migrate()
    Contact.create(email="ada@example.com")
    try:
        first = backup(url, tmp_path / "backups", keep=2)
        Contact.create(email="bob@example.com")  # after the backup
        backup(url, tmp_path / "backups", keep=2)
        backup(url, tmp_path / "backups", keep=2)
        assert len(list((tmp_path / "backups").glob("retentiond-*.db.gz"))) == 2  # rotated
    finally:
        close_database()
    restore(url, sorted((tmp_path / "backups").glob("*.db.gz"))[-1])
    init_database(url)
    try:
        assert sorted(c.email for c in Contact.select()) == ["ada@example.com", "bob@example.com"]
    finally:
        close_database()
    assert first.name.startswith("retentiond-")


def test_postgres_backup_and_restore_round_trip(pg_url: str, tmp_path: Path) -> None:
    init_database(pg_url)
    migrate()
    Contact.create(email="ada@example.com", attributes={"plan": "pro"})
    close_database()
    env = base_env(DATABASE_URL=pg_url, BACKUP_DIR=str(tmp_path / "backups"))
    made = cli("backup", "--keep", "3", env=env)
    assert made.returncode == 0, made.stderr
    dump = next((tmp_path / "backups").glob("retentiond-*.pgdump"))
    init_database(pg_url)
    Contact.delete().execute()  # disaster
    close_database()
    restored = cli("restore", str(dump), env=env)
    assert restored.returncode == 0, restored.stderr
    init_database(pg_url)
    try:
        ada = Contact.get()
        assert (ada.email, ada.attributes) == ("ada@example.com", {"plan": "pro"})
        assert utcnow()  # the schema works after the restore
    finally:
        close_database()
