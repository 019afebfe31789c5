"""Counting the SQL statements Peewee runs, as Peewee's own tests do (the ``statements`` fixture)."""

from __future__ import annotations

import logging


class StatementCounter(logging.Handler):
    """Counts the SQL statements Peewee runs (it logs each at DEBUG)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
