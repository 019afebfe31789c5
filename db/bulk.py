"""Multi-row INSERTs whose rows all carry the same columns.

Peewee's ``insert_many`` takes its column list from the FIRST row: a key that a later row has
and the first one lacks is dropped without a word, and a key the first row has and a later one
lacks gets the field's default. A planner batch that began with a template-error row once wrote
the good rows' emails with no subject and no body. So every multi-row insert of dicts goes
through :func:`insert_many` here, which refuses rows with different keys instead of guessing:
filling a missing key with ``None`` would be the same silent guess one level down (``None`` is
not a field's default). Call sites build each row from one full set of keys.
(``tests/test_bulk_rows.py`` checks that no other ``Model.insert_many`` of dicts is left.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import peewee


class MismatchedRows(ValueError):
    """Rows for one multi-row INSERT do not all have the same keys (the message names keys, never values)."""


def uniform_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows as dicts, checked to have exactly the keys of the first one; else MismatchedRows."""
    out = [dict(row) for row in rows]
    if not out:
        return out
    keys = out[0].keys()
    for position, row in enumerate(out[1:], start=1):
        if row.keys() != keys:
            missing = sorted(keys - row.keys())
            extra = sorted(row.keys() - keys)
            raise MismatchedRows(f"row {position} of {len(out)} differs from row 0: "
                                 f"missing {missing or 'nothing'}, extra {extra or 'nothing'}")
    return out


def insert_many(model: type[peewee.Model], rows: Iterable[Mapping[str, Any]]) -> Any:
    """``model.insert_many(rows)`` with every row checked to have the same keys (see the module).

    Returns Peewee's query, so callers chain ``.on_conflict_ignore()``, ``.returning(...)``.
    """
    checked = uniform_rows(rows)
    return model.insert_many(checked, fields=list(checked[0]) if checked else None)
