"""Backups and restores: ``retentiond backup [--keep N]`` and ``retentiond restore FILE``.

SQLite: the online backup API copies a consistent snapshot while the daemon runs (writers wait a
moment, nobody stops), gzipped into ``BACKUP_DIR`` as ``retentiond-<UTC time>.db.gz``.
PostgreSQL: ``pg_dump --format=custom`` into ``retentiond-<UTC time>.pgdump`` (needs the client
tools; the password reaches them through the environment, db/pg_tools.py). Only the newest ``keep``
backups stay. A file is written under a temporary name and renamed when complete, so a crash never
leaves a truncated backup that looks whole. Backups hold every contact: the files are 0600 whatever
the caller's umask, a directory created for them 0700; an existing directory keeps its mode (it is
refused when other users can write it, and used with a warning when they can read it).

Restore checks before it replaces anything, and keeps what it replaces:

1. the file is what ``retentiond backup`` makes (SQLite: a gzip of a database that passes
   ``PRAGMA integrity_check``, or such a database uncompressed, as a restore keeps the previous
   one; PostgreSQL: a custom archive ``pg_restore --list`` reads), with the migration table and
   only migrations this version knows;
2. no daemon is running on the live database (its leases, below);
3. SQLite: the previous database stays beside it as ``<db>.before-restore-<UTC>``, and the checked
   copy is renamed over it in one step; PostgreSQL: the previous database is dumped to
   ``before-restore-<UTC>.pgdump`` in the backup directory, then ``pg_restore --clean`` runs in one
   transaction.

A running daemon retakes its ``scheduling-tick`` lease every ``SCHEDULER_INTERVAL_S`` and renews
the lease of a job it runs, but a stopped one leaves its periodic jobs' leases parked until their
next due time (a day for retention cleanup): that is a schedule, not a daemon. So a lease counts as
"in use" when it has not expired and either its holder is a live process on this host (the holder
is ``host:pid``), or, for another host, it was taken or renewed within the last
``LIVE_WINDOW_S`` (or ``3 x SCHEDULER_INTERVAL_S``) or its job is still running.
"""

from __future__ import annotations

import datetime as dt
import gzip
import logging
import os
import re
import shutil
import socket
import sqlite3
import stat
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import peewee

from db.database import open_database, sqlite_path
from db.migrate import MIGRATIONS_DIR
from db.models import JobRun, Lease, utcnow
from db.pg_tools import ToolError, run_tool
from ground.errors import RetentiondError

PREFIX = "retentiond-"
LIVE_WINDOW_S = 30.0
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file

logger = logging.getLogger(__name__)


class BackupError(RetentiondError):
    pass


@dataclass(frozen=True)
class Restored:
    """What a restore did: where the previous database went, and migrations the backup predates."""

    previous: Path | None
    pending: list[str] = field(default_factory=list)


# -- backup ---------------------------------------------------------------------------------------


def backup(database_url: str, directory: str | Path, keep: int = 7) -> Path:
    target_dir = _private_dir(Path(directory))
    stamp = utcnow().strftime("%Y%m%d-%H%M%S-%f")
    if database_url.startswith("sqlite"):
        target = target_dir / f"{PREFIX}{stamp}.db.gz"
        _sqlite_backup(sqlite_path(database_url), target)
        suffix = ".db.gz"
    else:
        target = target_dir / f"{PREFIX}{stamp}.pgdump"
        _pg_dump(database_url, target)
        suffix = ".pgdump"
    _rotate(target_dir, suffix, keep)
    return target


def _private_dir(directory: Path) -> Path:
    """The backup directory: created 0700 when missing; an existing one is the operator's.

    An existing directory's mode is never changed (BACKUP_DIR=/tmp, chmodded 0700 by root, would
    break the system). One that other users can write is refused: they could plant a newer-looking
    "backup" for the next restore, or crowd ours out of the rotation. One they can only read is
    used with a warning: the files are 0600 whatever the directory, but their names show.
    """
    try:
        directory.mkdir(parents=True, mode=0o700)
        directory.chmod(0o700)  # mkdir's mode is filtered by the umask: it is about to hold every contact
        return directory
    except FileExistsError:
        pass
    except OSError as exc:
        raise BackupError(f"cannot use {directory} as a private backup directory ({exc.strerror})") from None
    if not directory.is_dir():
        raise BackupError(f"cannot use {directory} as a backup directory: it is not a directory")
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BackupError(f"refusing to write backups into {directory}: it is writable by other users "
                          f"(mode {mode:04o}), who could replace or plant backups; set RETENTIOND_BACKUP_DIR "
                          "to a directory of the service's own (it is created 0700 when missing)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("RETENTIOND_BACKUP_DIR: %s is open to other users (mode %04o): the backups in it are "
                       "0600, but their names and times show; chmod 700 it to keep that private", directory, mode)
    return directory


def _private_file(path: Path) -> BinaryIO:
    """A new file only its owner can read, whatever the umask (O_EXCL: never someone else's file)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _sqlite_backup(path: str, target: Path) -> None:
    if not os.path.exists(path):
        raise BackupError(f"no database at {path}")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # 0700
        snapshot = Path(tmp) / "snapshot.db"
        source = sqlite3.connect(path)
        copy = sqlite3.connect(snapshot)
        try:
            source.backup(copy)  # a consistent snapshot, pages copied while others keep working
        finally:
            copy.close()
            source.close()
        partial = target.with_name(target.name + ".partial")
        try:
            with snapshot.open("rb") as raw, _private_file(partial) as out, \
                    gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6) as packed:
                shutil.copyfileobj(raw, packed, 1 << 20)
            partial.rename(target)
        finally:
            partial.unlink(missing_ok=True)


def _pg_dump(url: str, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    _private_file(partial).close()  # pg_dump truncates and writes it, keeping the 0600 mode
    try:
        run_tool("pg_dump", ["--format=custom", f"--file={partial}"], url)
        partial.rename(target)
    except ToolError as exc:
        raise BackupError(str(exc)) from None
    finally:
        partial.unlink(missing_ok=True)


def _rotate(directory: Path, suffix: str, keep: int) -> None:
    backups = sorted(p for p in directory.glob(f"{PREFIX}*{suffix}"))
    for old in backups[:-keep] if keep > 0 else []:
        old.unlink()


# -- restore --------------------------------------------------------------------------------------


def restore(database_url: str, source: str | Path, *, backup_dir: str | Path | None = None,
            scheduler_interval_s: float = 1.0) -> Restored:
    """Check ``source``, refuse while a daemon runs on the database, keep the previous database,
    then replace it. Raises BackupError (one line) and leaves everything as it was on any refusal."""
    source = Path(source)
    if not source.is_file():
        raise BackupError(f"no backup at {source}")
    if database_url.startswith("sqlite"):
        return _restore_sqlite(database_url, source, scheduler_interval_s)
    return _restore_postgres(database_url, source, Path(backup_dir) if backup_dir else source.parent,
                             scheduler_interval_s)


def _restore_sqlite(url: str, source: Path, scheduler_interval_s: float) -> Restored:
    path = Path(sqlite_path(url))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".restoring")  # 0600
    unpacked = Path(name)
    try:
        try:
            with source.open("rb") as head:
                plain = head.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
            # A backup is gzipped; the database a restore kept aside (<db>.before-restore-*) is
            # not, and restoring it is how a restore is undone: both go through the same checks.
            with os.fdopen(fd, "wb") as raw, (source.open("rb") if plain else gzip.open(source, "rb")) as packed:
                shutil.copyfileobj(packed, raw, 1 << 20)
        except (OSError, EOFError, zlib.error) as exc:
            raise BackupError(f"{source} is not a backup made by `retentiond backup` (cannot unpack it: "
                              f"{_one_line(exc)})") from None
        pending = _check_sqlite(unpacked, source)
        if path.exists():
            _refuse_if_in_use(url, scheduler_interval_s)
            _same_owner(unpacked, path)
        previous = _keep_previous_sqlite(path)
        for stale in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)  # the old database's journal must not be replayed on the new one
        os.replace(unpacked, path)
        return Restored(previous, pending)
    finally:
        for leftover in (unpacked, Path(name + "-wal"), Path(name + "-shm"), Path(name + "-journal")):
            leftover.unlink(missing_ok=True)


def _check_sqlite(candidate: Path, source: Path) -> list[str]:
    try:
        connection = sqlite3.connect(candidate)
        try:
            problems = [row[0] for row in connection.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise BackupError(f"{source} fails SQLite's integrity check: {_one_line(problems[0])}")
            applied = [row[0] for row in connection.execute("SELECT name FROM schema_migration ORDER BY id")]
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{source} is not a retentiond backup ({_one_line(exc)})") from None
    return _check_migrations(applied, source)


def _check_migrations(applied: list[str], source: Path) -> list[str]:
    """Refuse a backup without migrations or with ones this version does not know (a newer
    retentiond's); return those it predates, for `retentiond migrate`."""
    known = sorted(p.stem for p in MIGRATIONS_DIR.glob("[0-9]*.py"))
    if not applied:
        raise BackupError(f"{source} is not a retentiond backup (no migration applied)")
    unknown = sorted(set(applied) - set(known))
    if unknown:
        raise BackupError(f"{source} was made by a newer retentiond (unknown migrations: {', '.join(unknown)})")
    return [name for name in known if name not in applied]


def _same_owner(new: Path, old: Path) -> None:
    """Root restoring for a service user: the daemon must still be able to open its database."""
    if os.geteuid() == 0:
        owner = old.stat()
        os.chown(new, owner.st_uid, owner.st_gid)


def _keep_previous_sqlite(path: Path) -> Path | None:
    """Hard-link the live database to ``<db>.before-restore-<UTC>`` after folding its WAL in, so the
    name keeps the complete old database and the rename over ``path`` never leaves it missing."""
    if not path.exists():
        return None
    try:
        connection = sqlite3.connect(path)
        try:
            busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError:
        busy = None  # not a database (or not WAL): kept as it is
    if busy and busy[0]:
        raise BackupError(f"{path} is in use (its write-ahead log could not be folded in): "
                          "stop every retentiond process on it first")
    kept = path.with_name(f"{path.name}.before-restore-{utcnow():%Y%m%dT%H%M%S.%fZ}")
    try:
        os.link(path, kept)
    except OSError:  # a filesystem without hard links
        shutil.copy2(path, kept)
    kept.chmod(0o600)
    return kept


def _restore_postgres(url: str, source: Path, backup_dir: Path, scheduler_interval_s: float) -> Restored:
    try:
        listing = run_tool("pg_restore", ["--list", str(source)])
    except ToolError as exc:
        raise BackupError(f"{source} is not a pg_dump custom archive made by `retentiond backup` ({exc})") from None
    if not re.search(r"TABLE DATA \S+ schema_migration ", listing.stdout):
        raise BackupError(f"{source} is not a retentiond backup (no schema_migration table in the archive)")
    try:
        data = run_tool("pg_restore", ["--data-only", "--table=schema_migration", "--file=-", str(source)])
    except ToolError as exc:
        raise BackupError(str(exc)) from None
    pending = _check_migrations(_copied_names(data.stdout), source)
    _refuse_if_in_use(url, scheduler_interval_s)
    previous = _private_dir(backup_dir) / f"before-restore-{utcnow():%Y%m%dT%H%M%S.%fZ}.pgdump"
    try:
        _pg_dump(url, previous)
        # One transaction: a restore that fails half-way leaves the database as it was.
        run_tool("pg_restore", ["--clean", "--if-exists", "--no-owner", "--single-transaction", str(source)], url)
    except ToolError as exc:
        raise BackupError(str(exc)) from None
    return Restored(previous, pending)


def _copied_names(sql: str) -> list[str]:
    """The ``name`` column of schema_migration from the COPY block pg_restore prints."""
    names: list[str] = []
    column: int | None = None
    for line in sql.splitlines():
        if column is None:
            header = re.match(r"COPY \S*schema_migration \(([^)]*)\) FROM stdin;", line)
            if header:
                column = [c.strip().strip('"') for c in header.group(1).split(",")].index("name")
        elif line == "\\.":
            break
        else:
            names.append(line.split("\t")[column])
    return names


# -- is a daemon running on it? -------------------------------------------------------------------


def _refuse_if_in_use(url: str, scheduler_interval_s: float) -> None:
    engine = open_database(url, pool_size=1, timeout_s=10.0)
    try:
        try:
            engine.connect()
        except peewee.DatabaseError as exc:
            if isinstance(engine, peewee.SqliteDatabase):
                return  # a damaged file no daemon can open: replacing it is what the restore is for
            raise BackupError(f"cannot connect to the database to check it is not in use "
                              f"({type(exc).__name__})") from None
        with engine.bind_ctx([Lease, JobRun]):
            try:
                leases = list(Lease.select().where(Lease.holder.is_null(False)))
                running = {(run.job, run.instance) for run in
                           JobRun.select(JobRun.job, JobRun.instance).where(JobRun.finished_at.is_null())}
            except peewee.DatabaseError:
                return  # no lease table: never migrated, so no daemon can run on it
        now = utcnow()
        window = dt.timedelta(seconds=max(LIVE_WINDOW_S, 3 * scheduler_interval_s))
        for lease in leases:
            if lease.expires_at is None or lease.expires_at <= now:
                continue
            last = max(t for t in (lease.acquired_at, lease.renewed_at, dt.datetime.min) if t is not None)
            host, _, pid = str(lease.holder).rpartition(":")
            if host == socket.gethostname() and pid.isdigit():
                live = _process_alive(int(pid))
            else:
                live = now - last <= window or (lease.name, lease.holder) in running
            if live:
                raise BackupError(
                    f"refusing to restore: instance {lease.holder} holds the lease {lease.name!r} until "
                    f"{lease.expires_at:%Y-%m-%d %H:%M:%S} UTC (last active {(now - last).total_seconds():.0f}s ago); "
                    "stop every retentiond daemon on this database first")
    finally:
        engine.close()
        close_all = getattr(engine, "close_all", None)
        if close_all is not None:
            close_all()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 200 else text[:200] + "..."
