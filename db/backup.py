"""Backups and restores: ``retentiond backup [--keep N]`` and ``retentiond restore FILE``.

SQLite: the online backup API copies a consistent snapshot while the daemon runs (writers wait a
moment, nobody stops), gzipped into ``BACKUP_DIR`` as ``retentiond-<UTC time>.db.gz``.
PostgreSQL: ``pg_dump --format=custom`` into ``retentiond-<UTC time>.pgdump`` (needs the client
tools). Only the newest ``keep`` backups stay. A file is written under a temporary name and
renamed when complete, so a crash never leaves a truncated backup that looks whole.

Restore (stop the daemon first): SQLite — the snapshot is unpacked next to the database and
renamed over it; PostgreSQL — ``pg_restore --clean --if-exists --no-owner`` into the database.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

from daemon.errors import RetentiondError
from db.database import sqlite_path
from db.models import utcnow

PREFIX = "retentiond-"


class BackupError(RetentiondError):
    pass


def backup(database_url: str, directory: str | Path, keep: int = 7) -> Path:
    target_dir = Path(directory)
    target_dir.mkdir(parents=True, exist_ok=True)
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


def _sqlite_backup(path: str, target: Path) -> None:
    if not os.path.exists(path):
        raise BackupError(f"no database at {path}")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        snapshot = Path(tmp) / "snapshot.db"
        source = sqlite3.connect(path)
        copy = sqlite3.connect(snapshot)
        try:
            source.backup(copy)  # a consistent snapshot, pages copied while others keep working
        finally:
            copy.close()
            source.close()
        partial = target.with_name(target.name + ".partial")
        with snapshot.open("rb") as raw, gzip.open(partial, "wb", compresslevel=6) as packed:
            shutil.copyfileobj(raw, packed, 1 << 20)
        partial.rename(target)


def _pg_dump(url: str, target: Path) -> None:
    if shutil.which("pg_dump") is None:
        raise BackupError("pg_dump is not installed (PostgreSQL client tools)")
    partial = target.with_name(target.name + ".partial")
    result = subprocess.run(["pg_dump", "--format=custom", "--file", str(partial), url],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {result.stderr.strip().splitlines()[-1] if result.stderr else 'no detail'}")
    partial.rename(target)


def _rotate(directory: Path, suffix: str, keep: int) -> None:
    backups = sorted(p for p in directory.glob(f"{PREFIX}*{suffix}"))
    for old in backups[:-keep] if keep > 0 else []:
        old.unlink()


def restore(database_url: str, source: str | Path) -> None:
    source = Path(source)
    if not source.exists():
        raise BackupError(f"no backup at {source}")
    if database_url.startswith("sqlite"):
        path = Path(sqlite_path(database_url))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".restoring")
        with gzip.open(source, "rb") as packed, partial.open("wb") as raw:
            shutil.copyfileobj(packed, raw, 1 << 20)
        for stale in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)
        partial.rename(path)
        return
    if shutil.which("pg_restore") is None:
        raise BackupError("pg_restore is not installed (PostgreSQL client tools)")
    result = subprocess.run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--dbname", database_url,
                             str(source)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BackupError(f"pg_restore failed: {result.stderr.strip().splitlines()[-1] if result.stderr else 'no detail'}")
