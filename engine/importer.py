"""Bulk import of contacts from CSV (``retentiond contacts import FILE.csv [--campaign SLUG]``).

Columns are named like the ``contact.upsert`` fields: external_id, email, phone, name, timezone;
``attributes.<key>`` columns become attributes, ``consent.<channel>`` columns consent
(true/false/yes/no/1/0; empty means "not given"). An unknown or a duplicated column stops the
import before anything is written.

Files come from spreadsheets: the text encoding is detected (a BOM; else UTF-8 if every byte of
the file is valid UTF-8; else charset-normalizer over the lines that are not ASCII, among the
encodings spreadsheets write, cp1252 when it reads the same as the best guess) and so is the
separator (csv.Sniffer among ``,`` ``;`` TAB ``|``). A row that cannot be read (a line over
MAX_LINE_CHARS, a field over MAX_FIELD_CHARS, bytes the encoding does not have) is reported like an
invalid one. An invalid row is reported with its line number in the file (a quoted field
may span lines) and skipped; the rest goes on. Rows are upserted in batches, each batch one
transaction with the same few statements whatever its size; ``on_batch`` (enrolment, for
``--campaign``) runs inside that transaction.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from db.database import database
from engine.contacts import ContactInput, InvalidContact, parse_contact, upsert_contacts
from engine.erasure import erased_among
from ground.channels import CHANNELS
from ground.errors import RetentiondError

PLAIN_COLUMNS = ("external_id", "email", "phone", "name", "timezone")
DELIMITERS = ",;\t|"
MAX_FIELD_CHARS = 65_536  # no contact field is near this; a longer one is a pasted blob or a runaway quote
MAX_LINE_CHARS = 1 << 20  # a longer line is one row error, read in pieces and never held whole
_SNIFF_BYTES = 64 * 1024
_BOMS = (  # UTF-32 first: its little-endian BOM begins with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
# What spreadsheets write when they do not write UTF-8: the Windows code pages and the Asian
# multi-byte ones. Left to itself charset-normalizer weighs every codec it knows, and on a short
# file of Western names it picks the likes of cp775 ("José" -> "Josķ").
_SPREADSHEET_ENCODINGS = ["cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257",
                          "cp1258", "cp874", "cp932", "cp949", "gb18030", "big5"]
_TRUE, _FALSE = {"true", "yes", "1", "y"}, {"false", "no", "0", "n"}


class CsvFormatError(RetentiondError):
    """The file cannot be imported at all (unknown column, no header); nothing was written."""


@dataclass
class ImportReport:
    encoding: str = "utf-8"
    delimiter: str = ","
    rows: int = 0
    created: int = 0
    updated: int = 0
    erased: int = 0  # rows naming an erased contact: not re-created (engine/erasure.py)
    invalid: list[tuple[int, str, str]] = field(default_factory=list)  # (line, field, message)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        rate = self.rows / self.elapsed_s if self.elapsed_s else 0.0
        erased = f", {self.erased} naming an erased contact (not re-created)" if self.erased else ""
        return (f"{self.rows} row(s): {self.created} created, {self.updated} updated, {len(self.invalid)} invalid"
                f"{erased} in {self.elapsed_s:.1f}s ({rate:.0f} rows/s)")


def _check_header(header: list[str], delimiter: str = ",") -> None:
    seen: dict[str, int] = {}
    for number, column in enumerate(header, start=1):
        if column in seen and column:
            # Which of the two values would win was never said: the file is refused, not guessed at.
            raise CsvFormatError(f"column {column!r} appears twice (columns {seen[column]} and {number})")
        seen.setdefault(column, number)
        if column in PLAIN_COLUMNS:
            continue
        prefix, _, rest = column.partition(".")
        if prefix == "attributes" and rest:
            continue
        if prefix == "consent" and rest in CHANNELS:
            continue
        raise CsvFormatError(f"unknown column {column!r} (columns separated by {delimiter!r}): use "
                             f"{', '.join(PLAIN_COLUMNS)}, attributes.<key> or consent.<channel> ({', '.join(CHANNELS)})")


def _row_data(header: list[str], values: list[str], encoding: str = "utf-8") -> dict[str, Any]:
    data: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    consent: dict[str, bool] = {}
    for column, raw in zip(header, values, strict=False):
        if "\ufffd" in raw:
            raise InvalidContact(column, f"holds bytes that are not {encoding} text (re-save the file as UTF-8)")
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


def detect_encoding(path: Path) -> str:
    """The text encoding of ``path``: a BOM's, UTF-8 if the file is valid UTF-8, else the best guess."""
    with path.open("rb") as fh:
        head = fh.read(4)
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    if _is_utf8(path):
        return "utf-8"
    import charset_normalizer  # only files that are not UTF-8 need it

    best = charset_normalizer.from_bytes(_non_ascii_lines(path), cp_isolation=_SPREADSHEET_ENCODINGS).best()
    if best is None:
        raise CsvFormatError(f"{path.name}: cannot tell its text encoding; save it as UTF-8 or name it with --encoding")
    # Latin text often reads the same in several code pages; Excel on Windows writes cp1252.
    return "cp1252" if "cp1252" in best.could_be_from_charset else best.encoding


def _is_utf8(path: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _non_ascii_lines(path: Path) -> bytes:
    """Up to _SNIFF_BYTES of the lines that hold non-ASCII bytes: the only ones that tell encodings apart."""
    kept: list[bytes] = []
    size = 0
    with path.open("rb") as fh:
        for line in iter(lambda: fh.readline(_SNIFF_BYTES), b""):  # pieces: a huge line is not held whole
            if not line.isascii():
                kept.append(line[:_SNIFF_BYTES])
                size += len(kept[-1])
                if size >= _SNIFF_BYTES:
                    break
    return b"".join(kept)


def detect_delimiter(header_line: str) -> str:
    """The separator of a file, from its header line, among DELIMITERS; ',' when nothing tells.

    Only the header is sniffed: its names are ours and hold no separator, while data rows may
    quote one (``"Doe; John"``), which makes csv.Sniffer give up on a whole sample.
    """
    try:
        return csv.Sniffer().sniff(header_line, delimiters=DELIMITERS).delimiter
    except csv.Error:  # one column, or nothing consistent: the header check will say what is wrong
        return ","


def _bounded_lines(fh: TextIO, overlong: set[int]) -> Iterator[str]:
    """The lines of ``fh`` for csv.reader, each at most MAX_LINE_CHARS.

    A longer line is read through in pieces and dropped: it is given as an empty line (so line
    numbers stay right) and its number is added to ``overlong``.
    """
    number = 0
    while line := fh.readline(MAX_LINE_CHARS):
        number += 1
        if len(line) < MAX_LINE_CHARS or line.endswith(("\n", "\r")):
            yield line
            continue
        longer = False
        while piece := fh.readline(MAX_LINE_CHARS):
            longer = True
            if piece.endswith(("\n", "\r")):
                break
        if longer:
            overlong.add(number)
            yield "\n"
        else:
            yield line  # exactly MAX_LINE_CHARS, at the end of the file


@contextlib.contextmanager
def _field_limit(chars: int) -> Iterator[None]:
    # csv's limit is process-wide: set it for this import only.
    previous = csv.field_size_limit(chars)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def import_csv(path: str | Path, *, default_region: str, batch_size: int = 1000, progress: bool = True,
               on_batch: Callable[[list[int]], object] | None = None, encoding: str | None = None) -> ImportReport:
    path = Path(path)
    encoding = encoding or detect_encoding(path)
    # errors="replace": bytes the encoding does not have become U+FFFD and reject their row only
    with path.open(newline="", encoding=encoding, errors="replace") as fh:
        delimiter = detect_delimiter(fh.readline(_SNIFF_BYTES))
    report = ImportReport(encoding=encoding, delimiter=delimiter)
    started = time.monotonic()
    with (path.open(newline="", encoding=encoding, errors="replace") as fh, _progress(progress, path) as bar,
          _field_limit(MAX_FIELD_CHARS)):
        overlong: set[int] = set()
        reader = csv.reader(_bounded_lines(fh, overlong), delimiter=delimiter)
        try:
            header = [h.strip() for h in next(reader, [])]
        except csv.Error as exc:
            raise CsvFormatError(f"{path.name}: the header line cannot be read: {_csv_problem(exc)}") from None
        if overlong:
            raise CsvFormatError(f"{path.name}: the header line is longer than {MAX_LINE_CHARS} characters")
        if not header or not any(header):
            raise CsvFormatError(f"{path.name}: no header line")
        try:
            _check_header(header, delimiter)
        except CsvFormatError as exc:
            raise CsvFormatError(f"{path.name}: {exc}") from None
        batch: list[ContactInput] = []
        last_line = reader.line_num
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # the reader goes on at the next line
                report.rows += 1
                report.invalid.append((last_line + 1, "row", _csv_problem(exc)))
                last_line = reader.line_num
                continue
            line, last_line = last_line + 1, reader.line_num  # where this record starts
            if overlong and not overlong.isdisjoint(range(line, last_line + 1)):
                report.rows += 1
                report.invalid.append((line, "row", f"a line is longer than {MAX_LINE_CHARS} characters"))
                continue
            if not any(v.strip() for v in values):
                continue
            report.rows += 1
            try:
                batch.append(parse_contact(_row_data(header, values, encoding), default_region))
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


def _csv_problem(exc: csv.Error) -> str:
    if "field limit" in str(exc):
        return f"a field is longer than {MAX_FIELD_CHARS} characters"
    return f"not readable as CSV ({exc})"  # csv's messages name characters, never the data


def _commit(batch: list[ContactInput], report: ImportReport, on_batch: Callable[[list[int]], object] | None) -> None:
    with database.atomic():
        if refused := erased_among(batch):
            report.erased += len(refused)
            batch = [contact for i, contact in enumerate(batch) if i not in refused]
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
