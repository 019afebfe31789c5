"""A worker process's journal of provider results not yet written to the database.

Why: a provider call that finished is a fact the database must learn, or the send stays
``sending`` and is eventually offered again — a duplicate message to a person. The delivery code
retries the database write while the process lives; this file covers the process dying first
(kill -9, OOM, a deploy during a database outage). A result is appended here the moment its
provider call returns, by the code that saw it return; a restart replays what was never marked
settled.

What survives what: an append is one ``os.write`` into the OS page cache, which outlives the
process however it dies, so a kill -9 loses no result that came back from the provider. The
fsync comes in groups: one per slice of results a worker thread settles (every SETTLE_EVERY_S at
most), BEFORE that slice's database write is attempted; so a power loss (or kernel crash) loses at
most the results of the last SETTLE_EVERY_S, none that reached the database. Settled markers and
truncations are not fsync'd: losing one only means an already-written result is replayed, and
replay is idempotent (it applies to a send still ``sending`` under the same claimant only, see
engine/sends.settle).

Format: JSON lines in ``<JOURNAL_DIR>/<instance>.journal``, one per worker process, opened in append
mode. A result line is ``{"seq": n, "by": instance, "result": {...}, "fallback": channel}``; a
settled line is ``{"settled": [n, ...]}``. When nothing is pending the file is truncated, so it
stays small (empty while the database is healthy); appends and truncations share one lock and a
line is pending from the moment it is written, so a truncation never drops a line just appended by
another thread (the event loop's). Lines hold ids, statuses, times and the provider's error text
— no address, subject or body (a replay reads those from the send row).

Ownership: the writer holds an exclusive ``flock`` on its file for its whole life; the kernel drops
it when the process dies however it dies. A file whose lock can be taken belongs to a dead process
and is replayed, by the supervisor at start and by every live worker on each heartbeat, then
removed. A torn last line (a crash mid-write) is not valid JSON and is ignored: its result was
never acknowledged as journaled, and its database write was not attempted.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from db.database import db_session
from db.models import utcnow
from engine.outcomes import ClaimedSend, Result
from engine.sends import settle_journaled
from ground.send_states import Outcome

logger = logging.getLogger(__name__)

SUFFIX = ".journal"
_PRIVATE_FIELDS = ("recipient", "subject", "body", "markup")  # never written to the journal
_SEND_TIMES = ("due_at", "queued_at", "claimed_at")
_RESULT_TIMES = ("until", "finished_at")


@dataclass(frozen=True)
class Entry:
    """A journaled result: who claimed the send, what the provider said, the step's fallback."""

    seq: int
    by: str
    result: Result
    fallback: str | None = None


class Journal:
    """Append-only, written at once and fsync'd in groups; ``directory=None`` keeps nothing on disk
    (tests, one-off tools)."""

    def __init__(self, directory: str | os.PathLike[str] | None, instance: str) -> None:
        self.instance = instance
        self.path: Path | None = None
        self._fd: int | None = None
        self._lock = threading.Lock()  # appends, truncations, the sequence and the pending set
        self._sync_lock = threading.Lock()  # one fsync at a time, outside _lock: appends never wait on a disk
        self._unsynced = False  # appended since the last fsync
        self._torn = False  # a write failed midway: the next line starts on a line of its own
        self._seq = 0
        self._pending: set[int] = set()
        if directory is not None:
            folder = Path(directory)
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path = folder / f"{_file_name(instance)}{SUFFIX}"
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours for as long as this process lives
            _fsync_dir(folder)  # the file's name survives a power loss too

    @property
    def pending(self) -> int:
        return len(self._pending)

    def append(self, results: Sequence[tuple[Result, str | None]]) -> list[int]:
        """Append results (each with its step's fallback channel) to the file, without an fsync:
        safe from a kill -9 of the process at once, from a power loss after ``sync``. Returns their
        seqs. Cheap enough for the event loop (one small write into the page cache)."""
        if not results:
            return []
        with self._lock:
            seqs = list(range(self._seq + 1, self._seq + 1 + len(results)))
            if self._fd is not None:
                lines = "".join(_dump({"seq": seq, "by": self.instance, "result": encode(result), "fallback": fb})
                                for seq, (result, fb) in zip(seqs, results, strict=True))
                self._write(lines)
                self._unsynced = True
            self._seq += len(results)
            self._pending.update(seqs)
        return seqs

    def sync(self) -> None:
        """Make every result appended so far survive a power loss (one fsync, if any is needed)."""
        with self._sync_lock:
            with self._lock:
                if self._fd is None or not self._unsynced:
                    return
                fd, self._unsynced = self._fd, False
            try:
                os.fsync(fd)  # close() waits for _sync_lock: fd stays open meanwhile
            except OSError:
                with self._lock:
                    self._unsynced = True
                raise

    def record(self, results: Sequence[tuple[Result, str | None]]) -> list[int]:
        """Append results and fsync them; returns their seqs."""
        seqs = self.append(results)
        self.sync()
        return seqs

    def settled(self, seqs: Iterable[int]) -> None:
        """These results are in the database. With nothing left pending, the file is emptied."""
        done = [s for s in seqs]
        if not done:
            return
        with self._lock:
            self._pending.difference_update(done)
            if self._fd is None:
                return
            if self._pending:
                self._write(_dump({"settled": done}))
            else:
                os.ftruncate(self._fd, 0)  # O_APPEND: the next line goes to offset 0
                self._torn = self._unsynced = False

    def _write(self, lines: str) -> None:
        """Write whole lines (under _lock). After a failed write (a full disk) the next line starts
        on a line of its own, so the torn one costs only itself."""
        assert self._fd is not None
        data = ("\n" if self._torn else "") + lines
        self._torn = True
        _write_all(self._fd, data.encode())
        self._torn = False

    def close(self) -> None:
        """Release the file: removed when nothing is pending, else left for a replay."""
        with self._sync_lock, self._lock:
            if self._fd is None:
                return
            if not self._pending and self.path is not None:
                self.path.unlink(missing_ok=True)
            os.close(self._fd)  # drops the lock
            self._fd = None


# -- replay ----------------------------------------------------------------------------------------


def read_unsettled(path: Path) -> list[Entry]:
    """The results of a journal file never marked settled; corrupt lines (a torn tail) skipped."""
    entries: dict[int, Entry] = {}
    settled: set[int] = set()
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                line = json.loads(raw)
                if "settled" in line:
                    settled.update(int(s) for s in line["settled"])
                else:
                    entries[int(line["seq"])] = Entry(int(line["seq"]), str(line["by"]), decode(line["result"]),
                                                      line.get("fallback"))
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("journal %s: line %d ignored (%s)", path.name, number, type(exc).__name__)
    return [e for seq, e in sorted(entries.items()) if seq not in settled]


def apply_entries(entries: list[Entry]) -> int:
    """Write replayed results (each only to a send its claimant still holds); returns how many applied."""
    by_claimant: dict[str, list[tuple[Result, str | None]]] = {}
    for e in entries:
        by_claimant.setdefault(e.by, []).append((e.result, e.fallback))
    with db_session():
        return len(settle_journaled(by_claimant, utcnow()))


def replay_orphans(directory: str | os.PathLike[str], apply: Callable[[list[Entry]], int] = apply_entries,
                   own: Path | None = None) -> int:
    """Replay the journals in ``directory`` whose writer is gone (their lock is free), through
    ``apply`` (which writes the entries and returns how many changed a send), then remove them.
    A file whose ``apply`` raises stays for the next try. Returns the sends changed."""
    folder = Path(directory)
    if not folder.is_dir():
        return 0
    changed = 0
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        if own is not None and path == own:
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:  # another replayer finished it
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its writer lives, or another replayer has it
                continue
            if not _same_file(fd, path):  # replayed and removed while we waited for the lock
                continue
            entries = read_unsettled(path)
            if entries:
                applied = apply(entries)
                changed += applied
                logger.info("journal %s of a stopped worker replayed: %d result(s) not yet written, %d applied "
                            "(the others were already settled)", path.name, len(entries), applied)
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return changed


# -- encoding ----------------------------------------------------------------------------------------


def encode(result: Result) -> dict[str, Any]:
    data = asdict(result)
    send = data.pop("send")
    for name in _PRIVATE_FIELDS:
        send.pop(name, None)
    data.pop("fallback_recipient", None)
    data.pop("invalid_devices", None)  # device tokens stay out of the journal, like addresses
    for name in _SEND_TIMES:
        send[name] = _time(send[name])
    for name in _RESULT_TIMES:
        data[name] = _time(data[name])
    return {"send": send, **{k: v for k, v in data.items() if v is not None}}


def decode(data: dict[str, Any]) -> Result:
    send = dict(data["send"])
    for name in _SEND_TIMES:
        send[name] = _parse_time(send.get(name))
    send.update(dict.fromkeys(_PRIVATE_FIELDS))
    known = {f.name for f in fields(ClaimedSend)}
    claimed = ClaimedSend(**{k: v for k, v in send.items() if k in known})
    rest = {k: v for k, v in data.items() if k != "send" and k in {f.name for f in fields(Result)}}
    for name in _RESULT_TIMES:
        if name in rest:
            rest[name] = _parse_time(rest[name])
    if claimed.due_at is None or "outcome" not in rest:
        raise KeyError("due_at/outcome")
    rest["outcome"] = Outcome(rest["outcome"])  # an unknown one is a ValueError: the line is skipped
    return Result(claimed, **rest)


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: object) -> dt.datetime | None:
    return dt.datetime.fromisoformat(str(value)) if value is not None else None


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str) + "\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def _file_name(instance: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in instance)
