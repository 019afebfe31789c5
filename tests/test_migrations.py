"""Migrations: the only way the schema is made; idempotent; the result matches the models."""

from __future__ import annotations

import multiprocessing

import peewee
from playhouse.schema_diff import diff_models

from db.database import close_database, database, init_database, open_database
from db.migrate import HISTORY_TABLE, MIGRATIONS_DIR, migrate, pending_migrations
from db.models import ALL_MODELS
from ops.harness.daemon import base_env, cli

ALL_MIGRATIONS = sorted(p.stem for p in MIGRATIONS_DIR.glob("[0-9]*.py"))


def _schema(engine: peewee.Database) -> dict[str, object]:
    """Tables, column types and nullability, indexes and foreign keys, as the engine reports them."""
    shape: dict[str, object] = {}
    for table in sorted(engine.get_tables()):
        if table == HISTORY_TABLE:
            continue
        columns = sorted((c.name, c.data_type.lower(), c.null, c.primary_key) for c in engine.get_columns(table))
        indexes = sorted((tuple(i.columns), i.unique) for i in engine.get_indexes(table))
        foreign_keys = sorted((f.column, f.dest_table, f.dest_column) for f in engine.get_foreign_keys(table))
        shape[table] = (columns, indexes, foreign_keys)
    return shape


def test_migrate_creates_the_schema_then_is_a_no_op(db_url: str) -> None:
    init_database(db_url)
    try:
        assert pending_migrations() == ALL_MIGRATIONS
        assert ALL_MIGRATIONS[0] == "0001_initial"
        assert migrate() == ALL_MIGRATIONS
        before = _schema(database.obj)
        assert migrate() == []  # second run: nothing to do
        assert pending_migrations() == []
        assert _schema(database.obj) == before
    finally:
        close_database()


def test_migrated_schema_matches_the_models(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given a database built by the migrations...
    init_database(db_url)
    migrate()
    migrated = database.obj
    try:
        # ...peewee's schema diff finds no table, column or index to add or drop...
        assert not diff_models(migrated, ALL_MODELS), str(diff_models(migrated, ALL_MODELS))
        migrated_shape = _schema(migrated)
    finally:
        close_database()
    # ...and its column types, nullability, indexes and foreign keys equal a schema made
    # straight from the models on the same engine.
    reference_url = f"sqlite:///{tmp_path / 'reference.db'}" if db_url.startswith("sqlite") else db_url
    if db_url.startswith("postgresql"):
        reference = open_database(db_url)
        reference.execute_sql("CREATE SCHEMA reference")
        reference.execute_sql("SET search_path TO reference")
    else:
        reference = open_database(reference_url)
    database.initialize(reference)
    try:
        reference.create_tables(ALL_MODELS)
        reference_shape = {t: s for t, s in _schema_in(reference, db_url).items()}
    finally:
        close_database()
    assert len(migrated_shape) == len(ALL_MODELS)
    assert migrated_shape == reference_shape


def _schema_in(engine: peewee.Database, db_url: str) -> dict[str, object]:
    if not db_url.startswith("postgresql"):
        return _schema(engine)
    shape: dict[str, object] = {}
    for table in sorted(engine.get_tables(schema="reference")):
        columns = sorted((c.name, c.data_type.lower(), c.null, c.primary_key)
                         for c in engine.get_columns(table, schema="reference"))
        indexes = sorted((tuple(i.columns), i.unique) for i in engine.get_indexes(table, schema="reference"))
        foreign_keys = sorted((f.column, f.dest_table, f.dest_column)
                              for f in engine.get_foreign_keys(table, schema="reference"))
        shape[table] = (columns, indexes, foreign_keys)
    return shape


def _migrate_in_child(url: str, results) -> None:  # type: ignore[no-untyped-def]
    init_database(url)
    results.put(migrate())
    close_database()


def test_two_processes_migrating_at_once_apply_each_migration_once(db_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    children = [context.Process(target=_migrate_in_child, args=(db_url, results)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    applied = sorted([results.get(timeout=5), results.get(timeout=5)])
    assert applied == [[], ALL_MIGRATIONS]


def test_cli_migrate_twice(db_url: str) -> None:
    env = base_env(DATABASE_URL=db_url)
    first = cli("migrate", env=env)
    second = cli("migrate", env=env)
    assert first.returncode == 0 and "0001_initial" in first.stdout, first.stderr
    assert second.returncode == 0 and "up to date" in second.stdout


def test_run_refuses_an_unmigrated_database(sqlite_url: str) -> None:
    result = cli("run", env=base_env(DATABASE_URL=sqlite_url))
    assert result.returncode == 2
    assert "retentiond migrate" in result.stderr
