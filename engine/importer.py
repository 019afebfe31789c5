"""Bulk import of contacts from CSV (``retentiond contacts import FILE.csv [--campaign SLUG]``).

Columns are named like the ``contact.upsert`` fields: external_id, email, phone, name, timezone;
``attributes.<key>`` columns become attributes, ``consent.<channel>`` columns consent
(true/false/yes/no/1/0; empty means "not given"). An unknown column stops the import before
anything is written. An invalid row is reported with its line number in the file (a quoted field
may span lines) and skipped; the rest goes on. Rows are upserted in batches, each batch one
transaction with the same few statements whatever its size; ``on_batch`` (enrolment, for
``--campaign``) runs inside that transaction.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from daemon.config import CHANNELS
from daemon.errors import RetentiondError
from db.database import database
from engine.contacts import ContactInput, InvalidContact, parse_contact, upsert_contacts

PLAIN_COLUMNS = ("external_id", "email", "phone", "name", "timezone")
_TRUE, _FALSE = {"true", "yes", "1", "y"}, {"false", "no", "0", "n"}


class CsvFormatError(RetentiondError):
    """The file cannot be imported at all (unknown column, no header); nothing was written."""


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    invalid: list[tuple[int, str, str]] = field(default_factory=list)  # (line, field, message)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        rate = self.rows / self.elapsed_s if self.elapsed_s else 0.0
        return (f"{self.rows} row(s): {self.created} created, {self.updated} updated, {len(self.invalid)} invalid "
                f"in {self.elapsed_s:.1f}s ({rate:.0f} rows/s)")


def _check_header(header: list[str]) -> None:
    for column in header:
        if column in PLAIN_COLUMNS:
            continue
        prefix, _, rest = column.partition(".")
        if prefix == "attributes" and rest:
            continue
        if prefix == "consent" and rest in CHANNELS:
            continue
        raise CsvFormatError(f"unknown column {column!r}: use {', '.join(PLAIN_COLUMNS)}, attributes.<key> "
                             f"or consent.<channel> ({', '.join(CHANNELS)})")


def _row_data(header: list[str], values: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    consent: dict[str, bool] = {}
    for column, raw in zip(header, values, strict=False):
        value = raw.strip()
        if not value:
            continue
        prefix, _, rest = column.partition(".")
        if prefix == "attributes" and rest:
            attributes[rest] = value
        elif prefix == "consent" and rest:
            if value.lower() in _TRUE:
                consent[rest] = True
            elif value.lower() in _FALSE:
                consent[rest] = False
            else:
                raise InvalidContact(column, f"expected true/false, got {value!r}")
        else:
            data[column] = value
    if attributes:
        data["attributes"] = attributes
    if consent:
        data["consent"] = consent
    return data


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def import_csv(path: str | Path, *, default_region: str, batch_size: int = 1000, progress: bool = True,
               on_batch: Callable[[list[int]], object] | None = None) -> ImportReport:
    path = Path(path)
    report = ImportReport()
    started = time.monotonic()
    with path.open(newline="", encoding="utf-8-sig") as fh, _progress(progress, path) as bar:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if not header or not any(header):
            raise CsvFormatError(f"{path.name}: no header line")
        _check_header(header)
        batch: list[ContactInput] = []
        last_line = reader.line_num
        for values in reader:
            line, last_line = last_line + 1, reader.line_num  # where this record starts
            if not any(v.strip() for v in values):
                continue
            report.rows += 1
            try:
                batch.append(parse_contact(_row_data(header, values), default_region))
            except InvalidContact as exc:
                report.invalid.append((line, exc.field, exc.problem))
            if len(batch) >= batch_size:
                _commit(batch, report, on_batch)
                batch = []
            bar.update(last_line)
        if batch:
            _commit(batch, report, on_batch)
        bar.update(last_line)
    report.elapsed_s = time.monotonic() - started
    return report


def _commit(batch: list[ContactInput], report: ImportReport, on_batch: Callable[[list[int]], object] | None) -> None:
    with database.atomic():
        results = upsert_contacts(batch)
        if on_batch is not None:
            on_batch(sorted({r.contact_id for r in results}))
    report.created += len({r.contact_id for r in results if r.created})
    report.updated += len({r.contact_id for r in results if not r.created})


class _Bar:
    def __init__(self, progress: Progress | None, task: Any) -> None:
        self.progress, self.task = progress, task

    def update(self, line: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=line)


class _progress:  # noqa: N801 (a context manager used like a function)
    """A rich progress bar on stderr over the file's lines, or nothing."""

    def __init__(self, enabled: bool, path: Path) -> None:
        self.enabled, self.path = enabled, path
        self.progress: Progress | None = None

    def __enter__(self) -> _Bar:
        if not self.enabled:
            return _Bar(None, None)
        from rich.console import Console

        self.progress = Progress(TextColumn("importing {task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True))
        self.progress.start()
        return _Bar(self.progress, self.progress.add_task(self.path.name, total=_count_lines(self.path)))

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
