"""Backups and restores as an operator on a bad day meets them: secrets stay out of `ps` and of the
terminal, files are private, and `retentiond restore` refuses anything that would lose the live
database (a file that is not a backup, a daemon still running on it)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import sqlite3
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from db.backup import backup
from db.database import close_database, init_database
from db.migrate import migrate
from db.models import Contact, Lease, utcnow
from db.pg_tools import libpq_connection, secrets_of, summarise
from ops.harness.daemon import DaemonProcess, base_env, cli

SECRET = "s3cret/pw"  # percent-encoded in the URL, so the tools must get the decoded form
ENCODED_SECRET = "s3cret%2Fpw"

# A wrapper put first on PATH under the name of a PostgreSQL client tool: it records its argv and the
# libpq variables it was given, then runs the real tool (or, with FAKE_PG_FAIL set, fails the way a
# tool does when the server refuses: several stderr lines, one of them quoting the password).
RECORDER = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_PG_LOG"], "a") as log:
    log.write(json.dumps({{"tool": name, "argv": sys.argv,
                          "env": {{k: v for k, v in os.environ.items() if k.startswith("PG")}}}}) + "\\n")
if os.environ.get("FAKE_PG_FAIL"):
    sys.stderr.write("%s: error: connection to server failed\\n" % name)
    sys.stderr.write("DETAIL: password authentication failed (tried %s)\\n" % os.environ.get("PGPASSWORD", "?"))
    sys.stderr.write("postgresql://postgres:{encoded}@db.example:5432/app said no to {secret}\\n")
    sys.exit(1)
os.execv("{real_dir}/" + name, [name] + sys.argv[1:])
"""


@pytest.fixture
def private_umask() -> Iterator[None]:
    """The permissive umask of an interactive shell: modes must not depend on the caller's."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def recording_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with recording pg_dump/pg_restore first; the env additions and the log they write."""
    import shutil

    real = shutil.which("pg_dump")
    if real is None:
        pytest.skip("PostgreSQL client tools not installed")
    real_dir = os.path.dirname(real)  # not the realpath: Debian links the tools to a wrapper that reads its name
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for tool in ("pg_dump", "pg_restore"):
        script = bin_dir / tool
        script.write_text(RECORDER.format(python=sys.executable, real_dir=real_dir, secret=SECRET,
                                          encoded=ENCODED_SECRET))
        script.chmod(0o755)
    log = tmp_path / "pg-calls.jsonl"
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_PG_LOG": str(log)}, log


def with_password(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}:{ENCODED_SECRET}@{parts.hostname}:{parts.port}").geturl()


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def live_sqlite(tmp_path: Path, *emails: str) -> tuple[str, Path]:
    db = tmp_path / "live.db"
    url = f"sqlite:///{db}"
    init_database(url)
    try:
        migrate()
        for email in emails:
            Contact.create(email=email)
    finally:
        close_database()
    return url, db


def emails_in(url: str) -> list[str]:
    init_database(url)
    try:
        return sorted(c.email for c in Contact.select())
    finally:
        close_database()


def gzip_file(path: Path, payload: bytes) -> Path:
    with gzip.open(path, "wb") as packed:
        packed.write(payload)
    return path


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert "Traceback" not in text
    return lines[0]


# -- #10: the database password stays out of argv and out of echoed stderr ---------------------


@pytest.mark.postgres
def test_pg_tools_get_the_password_from_the_environment_never_argv(pg_url: str, tmp_path: Path,
                                                                   private_umask: None) -> None:
    # Given a PostgreSQL URL with a password and recording wrappers around pg_dump / pg_restore
    init_database(pg_url)
    migrate()
    Contact.create(email="ada@example.com")
    close_database()
    extra, log = recording_path(tmp_path)
    env = {**base_env(DATABASE_URL=with_password(pg_url), BACKUP_DIR=str(tmp_path / "backups")), **extra}
    # When the operator backs up and restores
    made = cli("backup", env=env)
    assert made.returncode == 0, made.stderr
    dump = next((tmp_path / "backups").glob("retentiond-*.pgdump"))
    restored = cli("restore", str(dump), env=env)
    assert restored.returncode == 0, restored.stderr
    # Then no tool saw the password on its command line (what `ps` shows), every one got it from libpq's env
    recorded = calls(log)
    assert {c["tool"] for c in recorded} == {"pg_dump", "pg_restore"}
    for call in recorded:
        command_line = " ".join(call["argv"])
        assert SECRET not in command_line and ENCODED_SECRET not in command_line, command_line
    connecting = [c for c in recorded if any(a.startswith("--dbname") for a in c["argv"])]
    assert {c["tool"] for c in connecting} == {"pg_dump", "pg_restore"}
    assert all(c["env"].get("PGPASSWORD") == SECRET for c in connecting)
    # and the dump is private (#11)
    assert mode(dump) == 0o600 and mode(tmp_path / "backups") == 0o700
    assert SECRET not in made.stdout + made.stderr + restored.stdout + restored.stderr
    assert emails_in(pg_url) == ["ada@example.com"]


def test_pg_dump_stderr_is_one_line_without_the_password(tmp_path: Path) -> None:
    # Given pg_dump failing with several lines of stderr that quote the password
    extra, log = recording_path(tmp_path)
    url = f"postgresql://postgres:{ENCODED_SECRET}@127.0.0.1:9/app"
    env = {**base_env(DATABASE_URL=url, BACKUP_DIR=str(tmp_path / "backups")), **extra, "FAKE_PG_FAIL": "1"}
    # When the operator runs a backup
    result = cli("backup", env=env)
    # Then it fails with one line that carries no secret, and no partial file is left
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert SECRET not in line and ENCODED_SECRET not in line, line
    assert "pg_dump" in line
    assert calls(log), "the wrapper was not called"
    assert not list((tmp_path / "backups").iterdir())


def test_pg_restore_stderr_is_one_line_without_the_password(tmp_path: Path) -> None:
    extra, log = recording_path(tmp_path)
    url = f"postgresql://postgres:{ENCODED_SECRET}@127.0.0.1:9/app"
    env = {**base_env(DATABASE_URL=url), **extra, "FAKE_PG_FAIL": "1"}
    dump = tmp_path / "retentiond-x.pgdump"
    dump.write_bytes(b"PGDMP not really")
    result = cli("restore", str(dump), env=env)
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert SECRET not in line and ENCODED_SECRET not in line, line
    assert calls(log)


# -- #11: backups and restored databases are private --------------------------------------------


def test_sqlite_backups_and_their_directory_are_private(tmp_path: Path, private_umask: None) -> None:
    url, _ = live_sqlite(tmp_path, "ada@example.com")
    made = backup(url, tmp_path / "backups")
    assert mode(made) == 0o600
    assert mode(tmp_path / "backups") == 0o700


def test_a_restored_database_and_the_kept_previous_one_are_private(tmp_path: Path, private_umask: None) -> None:
    url, db = live_sqlite(tmp_path, "ada@example.com")
    db.chmod(0o644)  # as created by a daemon started from a shell with umask 022
    made = backup(url, tmp_path / "backups")
    result = cli("restore", str(made), env=base_env(DATABASE_URL=url))
    assert result.returncode == 0, result.stderr
    assert mode(db) == 0o600
    (kept,) = tmp_path.glob("live.db.before-restore-*")
    assert mode(kept) == 0o600


# -- #16: restore checks before it replaces anything ------------------------------------------


def not_a_backup_cases(tmp_path: Path) -> dict[str, Path]:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")
    connection.close()
    (tmp_path / "future").mkdir()
    _, future = live_sqlite(tmp_path / "future")
    with sqlite3.connect(future) as connection:
        connection.execute("INSERT INTO schema_migration (name, applied) VALUES ('9999_from_the_future', '2030-01-01')")
    connection.close()
    (tmp_path / "big").mkdir()
    _, good = live_sqlite(tmp_path / "big", *[f"user{i}@example.com" for i in range(2000)])
    data = good.read_bytes()
    damaged = bytearray(data)
    damaged[len(data) // 2: len(data) // 2 + 8192] = b"\xff" * 8192  # pages overwritten with garbage
    return {
        "gzip of text": gzip_file(tmp_path / "text.db.gz", b"not a database"),
        "not gzip": (tmp_path / "plain.db.gz"),
        "truncated gzip": tmp_path / "cut.db.gz",
        "sqlite without retentiond schema": gzip_file(tmp_path / "other.db.gz", other.read_bytes()),
        "migration this version does not know": gzip_file(tmp_path / "future.db.gz", future.read_bytes()),
        "damaged pages": gzip_file(tmp_path / "damaged.db.gz", bytes(damaged)),
    }


@pytest.mark.parametrize("case", ["gzip of text", "not gzip", "truncated gzip", "sqlite without retentiond schema",
                                  "migration this version does not know", "damaged pages"])
def test_restore_refuses_a_file_that_is_not_a_good_backup(tmp_path: Path, case: str) -> None:
    # Given a live database with a contact, and a file that is not a usable backup of it
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    url, db = live_sqlite(live_dir, "ada@example.com")
    cases = not_a_backup_cases(tmp_path)
    cases["not gzip"].write_text("hello, I am a text file\n")
    good = gzip.compress(db.read_bytes())
    cases["truncated gzip"].write_bytes(good[: len(good) // 2])
    # When the operator restores it
    result = cli("restore", str(cases[case]), env=base_env(DATABASE_URL=url))
    # Then it is refused in one line, non-zero, the live database untouched and nothing left behind
    assert result.returncode != 0, result.stdout
    line = one_line(result.stderr)
    assert str(cases[case].name) in line or "backup" in line, line
    assert emails_in(url) == ["ada@example.com"]
    assert sorted(p.name for p in live_dir.iterdir() if "restoring" in p.name or "before-restore" in p.name) == []


def test_restore_keeps_the_previous_database_beside_it(tmp_path: Path) -> None:
    url, db = live_sqlite(tmp_path, "ada@example.com")
    made = backup(url, tmp_path / "backups")
    init_database(url)
    Contact.create(email="bob@example.com")  # after the backup, and still in the WAL
    close_database()
    result = cli("restore", str(made), env=base_env(DATABASE_URL=url))
    assert result.returncode == 0, result.stderr
    assert emails_in(url) == ["ada@example.com"]
    (kept,) = tmp_path.glob("live.db.before-restore-*")
    assert kept.name in result.stdout  # the operator is told where the old one went
    assert emails_in(f"sqlite:///{kept}") == ["ada@example.com", "bob@example.com"]


def hold_lease(url: str, holder: str, *, ago_s: float = 1, expires_in_s: float = 60) -> None:
    init_database(url)
    try:
        now = utcnow()
        Lease.create(name="scheduling-tick", holder=holder, acquired_at=now - dt.timedelta(seconds=ago_s),
                     renewed_at=now - dt.timedelta(seconds=ago_s), expires_at=now + dt.timedelta(seconds=expires_in_s))
    finally:
        close_database()


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_restore_refuses_while_another_host_holds_a_live_lease(engine: str, tmp_path: Path,
                                                               request: pytest.FixtureRequest) -> None:
    if engine == "sqlite":
        url, _ = live_sqlite(tmp_path, "ada@example.com")
        made = backup(url, tmp_path / "backups")
    else:
        url = str(request.getfixturevalue("pg_url"))
        init_database(url)
        migrate()
        Contact.create(email="ada@example.com")
        close_database()
        made = backup(url, tmp_path / "backups")
    init_database(url)
    Contact.create(email="bob@example.com")
    close_database()
    # Given a daemon on another host that took its tick lease a second ago
    hold_lease(url, "other-host:4242")
    # When the operator restores
    result = cli("restore", str(made), env=base_env(DATABASE_URL=url))
    # Then it is refused, naming the holder, and nothing changed
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert "other-host:4242" in line and "scheduling-tick" in line, line
    assert emails_in(url) == ["ada@example.com", "bob@example.com"]


def test_a_lease_parked_by_a_stopped_daemon_does_not_block_a_restore(tmp_path: Path) -> None:
    # A periodic job's lease stays taken until the job is next due (a day for retention cleanup),
    # even after a clean stop: that is a schedule, not a running daemon.
    url, _ = live_sqlite(tmp_path, "ada@example.com")
    made = backup(url, tmp_path / "backups")
    hold_lease(url, "other-host:4242", ago_s=3600, expires_in_s=20 * 3600)
    result = cli("restore", str(made), env=base_env(DATABASE_URL=url))
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_restore_refuses_while_a_daemon_runs_and_works_once_it_stopped(tmp_path: Path, daemons: list) -> None:
    url, _ = live_sqlite(tmp_path, "ada@example.com")
    made = backup(url, tmp_path / "backups")
    env = base_env(DATABASE_URL=url)
    daemon = DaemonProcess(env, tmp_path).start()
    daemons.append(daemon)
    refused = cli("restore", str(made), env=env)
    assert refused.returncode != 0
    assert "lease" in one_line(refused.stderr)
    assert daemon.stop() == 0
    # stopped cleanly on this host: its process is gone, so its parked leases do not count
    restored = cli("restore", str(made), env=env)
    assert restored.returncode == 0, restored.stderr


@pytest.mark.postgres
def test_pg_restore_refuses_a_file_that_is_not_a_pg_dump_archive(pg_url: str, tmp_path: Path) -> None:
    init_database(pg_url)
    migrate()
    Contact.create(email="ada@example.com")
    close_database()
    junk = gzip_file(tmp_path / "retentiond-x.pgdump", b"not a database")
    result = cli("restore", str(junk), env=base_env(DATABASE_URL=pg_url))
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert "pg_dump" in line, line
    assert emails_in(pg_url) == ["ada@example.com"]


@pytest.mark.postgres
def test_pg_restore_refuses_an_archive_of_another_database(pg_url: str, tmp_path: Path) -> None:
    # Given a real pg_dump archive of a database that is not retentiond's
    init_database(pg_url)
    from db.database import database

    database.execute_sql("CREATE TABLE notes (body text)")
    close_database()
    foreign = backup(pg_url, tmp_path / "foreign")
    init_database(pg_url)
    database.execute_sql("DROP TABLE notes")
    migrate()
    Contact.create(email="ada@example.com")
    close_database()
    # When the operator restores it over the live database
    result = cli("restore", str(foreign), env=base_env(DATABASE_URL=pg_url, BACKUP_DIR=str(tmp_path / "b")))
    # Then it is refused before anything is dropped
    assert result.returncode != 0
    assert "schema_migration" in one_line(result.stderr)
    assert emails_in(pg_url) == ["ada@example.com"]


# -- properties of the password handling (fast, no tools) ----------------------------------------

passwords = st.text(st.characters(codec="utf-8", exclude_characters="*\r\n\x00"), min_size=4, max_size=40)


@settings(max_examples=200, deadline=None)
@given(password=passwords, user=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True))
def test_any_password_moves_from_the_url_to_the_environment(password: str, user: str) -> None:
    url = f"postgresql://{user}:{quote(password, safe='')}@db.internal:5432/app?sslmode=require"
    clean, env = libpq_connection(url)
    assert env == {"PGPASSWORD": password}
    parts = urlsplit(clean)
    assert parts.password is None and parts.username == user
    assert (parts.hostname, parts.port, parts.path, parts.query) == ("db.internal", 5432, "/app", "sslmode=require")


@settings(max_examples=200, deadline=None)
@given(password=passwords, lines=st.lists(st.text(max_size=80), max_size=5), where=st.integers(0, 5))
def test_a_summarised_stderr_never_holds_the_password(password: str, lines: list[str], where: int) -> None:
    lines.insert(min(where, len(lines)), f"pg_dump: error: auth failed for {password} via "
                                         f"postgresql://u:{quote(password, safe='')}@h/db")
    url = f"postgresql://u:{quote(password, safe='')}@h/db"
    line = summarise("\n".join(lines), secrets_of(url), 1)
    assert len(line.splitlines()) == 1
    assert password not in line and quote(password, safe="") not in line


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can restore for another user")
def test_root_restoring_for_the_service_user_keeps_the_database_its_owner(tmp_path: Path) -> None:
    # Given the live database owned by the service user (nobody here), and root running the restore
    url, db = live_sqlite(tmp_path, "ada@example.com")
    made = backup(url, tmp_path / "backups")
    os.chown(db, 65534, 65534)
    result = cli("restore", str(made), env=base_env(DATABASE_URL=url))
    assert result.returncode == 0, result.stderr
    # Then the daemon, running as that user, can still open it
    assert (db.stat().st_uid, db.stat().st_gid, mode(db)) == (65534, 65534, 0o600)


# -- an existing BACKUP_DIR is not ours to chmod (issue 10, follow-up defect 8) ------------------


def test_backup_into_an_existing_readable_directory_leaves_its_mode_and_warns(tmp_path: Path) -> None:
    # Given a BACKUP_DIR the operator made, readable by others (as /srv/backups may be)
    url, _ = live_sqlite(tmp_path, "ada@example.com")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    # When a backup is made into it
    result = cli("backup", env=base_env(DATABASE_URL=url, BACKUP_DIR=str(shared)))
    # Then it is made, private, the directory keeps its mode, and the operator is told once
    assert result.returncode == 0, result.stderr
    (made,) = shared.glob("retentiond-*.db.gz")
    assert mode(made) == 0o600 and mode(shared) == 0o755
    warning = one_line(result.stderr)
    assert "RETENTIOND_BACKUP_DIR" in warning and str(shared) in warning and "0755" in warning


@pytest.mark.parametrize("shared_mode", [0o1777, 0o777, 0o775])
def test_backup_refuses_a_directory_others_can_write(tmp_path: Path, shared_mode: int) -> None:
    # Given BACKUP_DIR=/tmp, or any directory other users can write (and so plant or swap backups in)
    url, _ = live_sqlite(tmp_path, "ada@example.com")
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(shared_mode)
    result = cli("backup", env=base_env(DATABASE_URL=url, BACKUP_DIR=str(shared)))
    # Then it refuses in one line, leaves the directory's mode alone and writes nothing
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert str(shared) in line and "writable by other users" in line
    assert mode(shared) == shared_mode and list(shared.iterdir()) == []


def test_backup_creates_a_missing_directory_private(tmp_path: Path, private_umask: None) -> None:
    url, _ = live_sqlite(tmp_path, "ada@example.com")
    result = cli("backup", env=base_env(DATABASE_URL=url, BACKUP_DIR=str(tmp_path / "new" / "backups")))
    assert result.returncode == 0 and result.stderr == ""
    assert mode(tmp_path / "new" / "backups") == 0o700


# -- the database kept by a restore can be restored (undo) -------------------------------------


def test_the_database_kept_by_a_restore_can_be_restored_to_undo_it(tmp_path: Path) -> None:
    # Given a restore of an old backup over a database that had more in it
    url, db = live_sqlite(tmp_path, "ada@example.com")
    made = backup(url, tmp_path / "backups")
    init_database(url)
    Contact.create(email="bob@example.com")
    close_database()
    env = base_env(DATABASE_URL=url)
    assert cli("restore", str(made), env=env).returncode == 0
    (kept,) = tmp_path.glob("live.db.before-restore-*")
    # When the operator restores the kept database (a plain SQLite file, not a gzip)
    result = cli("restore", str(kept), env=env)
    # Then the restore is undone
    assert result.returncode == 0, result.stderr
    assert emails_in(url) == ["ada@example.com", "bob@example.com"]
    assert mode(db) == 0o600


@pytest.mark.parametrize("case", ["sqlite without retentiond schema", "migration this version does not know",
                                  "damaged pages"])
def test_restore_checks_an_uncompressed_database_as_it_checks_a_backup(tmp_path: Path, case: str) -> None:
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    url, _ = live_sqlite(live_dir, "ada@example.com")
    plain = tmp_path / "plain.db"
    plain.write_bytes(gzip.decompress(not_a_backup_cases(tmp_path)[case].read_bytes()))
    result = cli("restore", str(plain), env=base_env(DATABASE_URL=url))
    assert result.returncode != 0
    one_line(result.stderr)
    assert emails_in(url) == ["ada@example.com"]
    assert sorted(p.name for p in live_dir.iterdir() if "restoring" in p.name or "before-restore" in p.name) == []
