"""Portable field types: the same column on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import peewee


class JSONTextField(peewee.TextField):
    """JSON stored as text: portable, and never queried by its inside on a hot path."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)
