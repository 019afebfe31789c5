"""Hot-path statements that Peewee's query builder cannot express portably: one statement for
many rows with different values."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from db.bulk import MismatchedRows
from db.database import database, is_postgres
from ground.send_states import SendStatus

# Columns a settled send gets, in this order, after its id.
SETTLE_COLUMNS = ("status", "provider", "provider_message_id", "error", "reason", "finished_at", "due_at",
                  "attempts", "deferrals", "claimed_at", "queued_at")
_TIMESTAMPS = {"finished_at", "due_at", "claimed_at", "queued_at"}
_INTEGERS = {"attempts", "deferrals"}


def _sqlite_value(value: Any) -> Any:
    # The same text Peewee writes for a DateTimeField on SQLite.
    return str(value) if isinstance(value, dt.datetime) else value


def settle_sends(rows: Sequence[tuple[Any, ...]], expected_status: SendStatus = SendStatus.SENDING) -> int:
    """Write many sends' outcomes: each row is (id, *SETTLE_COLUMNS).

    Only rows still in ``expected_status`` change, so a send settled twice (a redelivery racing
    a reconciler) keeps its first outcome. Returns the number of rows changed.
    """
    casts = {c: "timestamp" for c in _TIMESTAMPS} | {c: "integer" for c in _INTEGERS}
    return bulk_update("send", SETTLE_COLUMNS, rows, casts=casts, guard=("status", expected_status),
                       rows_per_statement=500)


def bulk_update(table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]],
                casts: dict[str, str] | None = None, guard: tuple[str, Any] | None = None,
                rows_per_statement: int = 1000) -> int:
    """``UPDATE table SET col = v.col ... FROM (VALUES ...) WHERE table.id = v.id``: many rows with
    different values in one statement per ``rows_per_statement``. Each row is (id, *columns).
    ``casts`` gives PostgreSQL types for columns that are not text (VALUES params arrive untyped);
    ``guard`` (column, value) changes only rows that still have that value."""
    casts = casts or {}
    changed = 0
    names = ", ".join(("id", *columns))
    width = 1 + len(columns)
    if any(len(row) != width for row in rows):
        # A short row beside a long one keeps the parameter count right and shifts every value after it.
        raise MismatchedRows(f"bulk_update of {table}: every row must be (id, {', '.join(columns)})")
    for start in range(0, len(rows), rows_per_statement):
        chunk = rows[start:start + rows_per_statement]
        if is_postgres():
            placeholders = ", ".join("(" + ", ".join(["%s"] * width) + ")" for _ in chunk)
            assignments = ", ".join(f"{c} = v.{c}::{casts.get(c, 'text')}" for c in columns)
            sql = (f"UPDATE {table} SET {assignments} FROM (VALUES {placeholders}) AS v({names}) "
                   f"WHERE {table}.id = v.id::integer")
            params = [value for row in chunk for value in row]
            if guard is not None:
                sql += f" AND {table}.{guard[0]} = %s"
                params.append(guard[1])
        else:
            placeholders = ", ".join("(" + ", ".join(["?"] * width) + ")" for _ in chunk)
            assignments = ", ".join(f"{c} = v.{c}" for c in columns)
            sql = f"WITH v({names}) AS (VALUES {placeholders}) UPDATE {table} SET {assignments} FROM v WHERE {table}.id = v.id"
            params = [_sqlite_value(value) for row in chunk for value in row]
            if guard is not None:
                sql += f" AND {table}.{guard[0]} = ?"
                params.append(guard[1])
        changed += database.execute_sql(sql, params).rowcount
    return changed
