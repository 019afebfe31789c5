"""Group commit of inbound events: durable before the 2xx, without a transaction per request.

Request handlers hand their verified event to ``GroupCommitter.submit`` and await it. One writer
task takes whatever has queued up (up to ``max_batch``) and writes it in ONE transaction on a
committer thread — ``INSERT ... ON CONFLICT (source, event_id) DO NOTHING RETURNING`` — then
answers every waiting request: new (202) or a duplicate of an event already stored (200). While
batches commit, the next one gathers, so the batch size follows the load: one event at a time when
idle, hundreds under a burst. On PostgreSQL up to ``concurrency`` batches commit at once (a commit
is mostly waiting for the WAL flush; the unique index settles races between them); SQLite has one
writer, so one. Repeats inside one batch are answered from the first occurrence.

If the commit fails (database away), every request of the batch gets the error (503): nothing was
accepted, so the sender retries later. Nothing is buffered beyond the requests in flight, so a crash
loses only requests that had not been answered yet.

Load shedding: the queue holds at most ``max_queued`` requests, and a request waits at most
``max_wait_s`` for its batch to start. A request refused because the queue is full, or dropped at
its deadline, gets ``Overloaded`` (503 with ``Retry-After``) and is never written: the writer skips
a dropped entry when it reaches it. Once a request's batch has started it waits for that commit's
outcome, and the commit itself waits at most ``max_wait_s`` for the database's write lock (SQLite
``busy_timeout``, PostgreSQL ``lock_timeout``/``statement_timeout``), so no answer takes much
longer than twice ``max_wait_s`` and a database locked for minutes costs bounded memory.

A caller that must not wait for a commit at all (a reader's click, ``submit_within``) stops
waiting at its own deadline even when its batch is under way; the batch then still decides whether
the event is written, and reports it to the caller's callback (``StillWriting``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import peewee

from db.database import database, db_session, is_postgres, sql_rows, transaction_waiting_at_most
from db.models import utcnow
from ground.outage_log import OutageLog
from ground.vocabulary import InboundStatus

logger = logging.getLogger(__name__)
# With the database away every batch fails: one line per outage, not one per batch.
_commit_outage = OutageLog(logger, "committing inbound events")


@dataclass(frozen=True)
class IncomingEvent:
    source: str
    event_id: str
    type: str | None
    payload: str
    status: InboundStatus = InboundStatus.PENDING  # or UNMAPPABLE, kept with its reason
    error: str | None = None


class Overloaded(Exception):
    """The event was not accepted (queue full, or its deadline passed before its batch started);
    nothing of it is or will be written. The sender should retry after ``retry_after_s``."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class StillWriting(Exception):
    """The caller's deadline passed while the event's batch was being written: it may yet be stored.
    ``outcome`` settles when that commit does (True new, False a duplicate, or the commit's error)."""

    def __init__(self, outcome: asyncio.Future[bool]) -> None:
        super().__init__("the event's batch is still being written")
        self.outcome = outcome


@dataclass(eq=False)
class _Pending:
    event: IncomingEvent
    future: asyncio.Future[bool] = field(repr=False)
    taken: bool = False  # in a batch being written: its outcome is the commit's
    dropped: bool = False  # answered 503 while queued: the writer must skip it


class GroupCommitter:
    def __init__(self, max_batch: int = 1000, on_commit: Callable[[int], None] | None = None,
                 concurrency: int = 1, max_queued: int = 1000, max_wait_s: float = 5.0) -> None:
        self.max_batch = max_batch
        self.on_commit = on_commit  # called (in the event loop) with the number of new events
        self.concurrency = concurrency
        self.max_wait_s = max_wait_s
        # What a refused sender is told to wait: about one deadline, by then the queue has turned over.
        self.retry_after_s = max(1, math.ceil(max_wait_s))
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queued)
        self._writer: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="group-commit")
        self.batches = 0
        self.committed = 0
        self.peak_queued = 0  # high-water mark of the queue, for tests and diagnosis

    @property
    def idle(self) -> bool:
        """Nothing queued (dropped entries included) and no batch being written."""
        return self._queue.empty() and not self._in_flight

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        while not self.idle:
            await asyncio.sleep(0.005)
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        self._thread.shutdown(wait=True)

    async def submit(self, event: IncomingEvent, max_wait_s: float | None = None) -> bool:
        """True when stored now, False when it duplicates an event stored before. Raises
        ``Overloaded`` when the queue is full or the event's batch did not start within
        ``max_wait_s`` (default: the committer's); then nothing of it is written. Once its batch
        has started, waits for that commit (bounded by the commit's own lock timeout)."""
        pending = self._enqueue(event)
        try:
            return await self._wait(pending, self.max_wait_s if max_wait_s is None else max_wait_s)
        except StillWriting:
            # Its batch is being written: the commit decides (and gives up within its lock timeout).
            return await pending.future

    async def submit_within(self, event: IncomingEvent, max_wait_s: float) -> bool:
        """Like ``submit``, but never waits longer than ``max_wait_s`` in all: when the deadline
        passes with the event's batch under way, raises ``StillWriting``, whose ``outcome`` says
        later whether the event was written."""
        return await self._wait(self._enqueue(event), max_wait_s)

    def _enqueue(self, event: IncomingEvent) -> _Pending:
        pending = _Pending(event, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Overloaded("the ingest queue is full", self.retry_after_s) from None
        self.peak_queued = max(self.peak_queued, self._queue.qsize())
        return pending

    async def _wait(self, pending: _Pending, max_wait_s: float) -> bool:
        try:
            async with asyncio.timeout(max_wait_s):
                return await asyncio.shield(pending.future)
        except TimeoutError:
            if not pending.taken:
                pending.dropped = True
                raise Overloaded("waited too long for the database", self.retry_after_s) from None
            raise StillWriting(pending.future) from None
        except asyncio.CancelledError:  # the client went away: write it only if already under way
            pending.dropped = not pending.taken
            pending.future.cancel()
            raise

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.concurrency)
        while True:
            first = await self._queue.get()
            await slots.acquire()  # while every committer is busy, the queue keeps filling
            batch = [first]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # Entries answered 503 (or abandoned) while they queued are never written.
            batch = [p for p in batch if not p.dropped and not p.future.done()]
            if not batch:
                slots.release()
                continue
            for pending in batch:
                pending.taken = True
            task = loop.create_task(self._commit_and_answer(batch, slots))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _commit_and_answer(self, batch: list[_Pending], slots: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(self._thread, _commit, [p.event for p in batch],
                                             int(self.max_wait_s * 1000))
        except Exception as exc:
            _commit_outage.failed(exc, logging.ERROR)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        finally:
            slots.release()
        _commit_outage.succeeded()
        self.batches += 1
        self.committed += len(new)
        first_of: dict[tuple[str, str], asyncio.Future[bool]] = {}
        for pending in batch:
            event, future = pending.event, pending.future
            key = (event.source, event.event_id)
            if future.done():
                continue
            if key in new and key not in first_of:
                first_of[key] = future
                future.set_result(True)
            else:
                future.set_result(False)
        if new and self.on_commit is not None:
            self.on_commit(len(new))


_COLUMNS = "source, event_id, type, payload, status, error, received_at"


def _commit(events: list[IncomingEvent], lock_timeout_ms: int) -> set[tuple[str, str]]:
    """One INSERT for the batch, built by hand: this runs per webhook, and the query builder's
    per-row work showed in profiles. Returns the (source, event_id) pairs stored now.

    Waits at most ``lock_timeout_ms`` for the database's write lock: the requests of the batch are
    waiting for their answer, and a 503 they can retry beats a 202 after a minute."""
    now = utcnow()
    unique: dict[tuple[str, str], IncomingEvent] = {}
    for event in events:
        unique.setdefault((event.source, event.event_id), event)
    values = [(e.source, e.event_id, e.type, e.payload, e.status, e.error, now) for e in unique.values()]
    with db_session(), transaction_waiting_at_most(lock_timeout_ms):
        return _insert(values)


def _insert(values: Sequence[tuple[object, ...]]) -> set[tuple[str, str]]:
    if is_postgres():
        from psycopg2.extras import execute_values

        cursor = database.cursor()
        # Peewee's own mapping of driver errors (the raw cursor bypasses it): a lock or statement
        # timeout is then peewee's OperationalError, like every other database failure here.
        with peewee.__exception_wrapper__:  # type: ignore[attr-defined]  # public in peewee, not in its stubs
            inserted = execute_values(
                cursor, f"INSERT INTO inbound_event ({_COLUMNS}) VALUES %s "
                        "ON CONFLICT (source, event_id) DO NOTHING RETURNING source, event_id",
                values, page_size=len(values), fetch=True)
    else:
        placeholders = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(values))
        params = [v if i != 6 else str(v) for row in values for i, v in enumerate(row)]
        inserted = sql_rows(
            f"INSERT OR IGNORE INTO inbound_event ({_COLUMNS}) VALUES {placeholders} RETURNING source, event_id",
            params)
    return {(source, event_id) for source, event_id in inserted}
