"""Hot-path statements that Peewee's query builder cannot express portably: one statement for
many rows with different values."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from db.database import database, is_postgres

# Columns a settled send gets, in this order, after its id.
SETTLE_COLUMNS = ("status", "provider", "provider_message_id", "error", "reason", "finished_at", "due_at",
                  "attempts", "deferrals", "claimed_at", "queued_at")
_TIMESTAMPS = {"finished_at", "due_at", "claimed_at", "queued_at"}
_INTEGERS = {"attempts", "deferrals"}
_ROWS_PER_STATEMENT = 500


def _pg_cast(column: str) -> str:
    if column in _TIMESTAMPS:
        return f"v.{column}::timestamp"
    if column in _INTEGERS:
        return f"v.{column}::integer"
    return f"v.{column}::text"


def _sqlite_value(value: Any) -> Any:
    # The same text Peewee writes for a DateTimeField on SQLite.
    return str(value) if isinstance(value, dt.datetime) else value


def settle_sends(rows: Sequence[tuple[Any, ...]], expected_status: str = "sending") -> int:
    """Write many sends' outcomes in one statement per 500 rows: each row is (id, *SETTLE_COLUMNS).

    Only rows still in ``expected_status`` change, so a send settled twice (a redelivery racing
    a reconciler) keeps its first outcome. Returns the number of rows changed.
    """
    changed = 0
    width = 1 + len(SETTLE_COLUMNS)
    names = ", ".join(("id", *SETTLE_COLUMNS))
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start:start + _ROWS_PER_STATEMENT]
        if is_postgres():
            placeholders = ", ".join("(" + ", ".join(["%s"] * width) + ")" for _ in chunk)
            assignments = ", ".join(f"{c} = {_pg_cast(c)}" for c in SETTLE_COLUMNS)
            sql = (f"UPDATE send SET {assignments} FROM (VALUES {placeholders}) AS v({names}) "
                   f"WHERE send.id = v.id::integer AND send.status = %s")
            params = [value for row in chunk for value in row] + [expected_status]
        else:
            placeholders = ", ".join("(" + ", ".join(["?"] * width) + ")" for _ in chunk)
            assignments = ", ".join(f"{c} = v.{c}" for c in SETTLE_COLUMNS)
            sql = (f"WITH v({names}) AS (VALUES {placeholders}) "
                   f"UPDATE send SET {assignments} FROM v WHERE send.id = v.id AND send.status = ?")
            params = [_sqlite_value(value) for row in chunk for value in row] + [expected_status]
        cursor = database.execute_sql(sql, params)
        changed += cursor.rowcount
    return changed


def bulk_update(table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]],
                casts: dict[str, str] | None = None, rows_per_statement: int = 1000) -> int:
    """``UPDATE table SET col = v.col ... FROM (VALUES ...) WHERE table.id = v.id``: many rows with
    different values in one statement per ``rows_per_statement``. Each row is (id, *columns).
    ``casts`` gives PostgreSQL types for columns that are not text (VALUES params arrive untyped)."""
    casts = casts or {}
    changed = 0
    names = ", ".join(("id", *columns))
    width = 1 + len(columns)
    for start in range(0, len(rows), rows_per_statement):
        chunk = rows[start:start + rows_per_statement]
        if is_postgres():
            placeholders = ", ".join("(" + ", ".join(["%s"] * width) + ")" for _ in chunk)
            assignments = ", ".join(f"{c} = v.{c}::{casts.get(c, 'text')}" for c in columns)
            sql = (f"UPDATE {table} SET {assignments} FROM (VALUES {placeholders}) AS v({names}) "
                   f"WHERE {table}.id = v.id::integer")
            params = [value for row in chunk for value in row]
        else:
            placeholders = ", ".join("(" + ", ".join(["?"] * width) + ")" for _ in chunk)
            assignments = ", ".join(f"{c} = v.{c}" for c in columns)
            sql = f"WITH v({names}) AS (VALUES {placeholders}) UPDATE {table} SET {assignments} FROM v WHERE {table}.id = v.id"
            params = [_sqlite_value(value) for row in chunk for value in row]
        changed += database.execute_sql(sql, params).rowcount
    return changed
