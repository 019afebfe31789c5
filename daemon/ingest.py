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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass

from db.database import database, db_session, is_postgres
from db.models import utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IncomingEvent:
    source: str
    event_id: str
    type: str | None
    payload: str
    status: str = "pending"  # or 'unmappable', kept with its reason
    error: str | None = None


class GroupCommitter:
    def __init__(self, max_batch: int = 1000, on_commit: Callable[[int], None] | None = None,
                 concurrency: int = 1) -> None:
        self.max_batch = max_batch
        self.on_commit = on_commit  # called (in the event loop) with the number of new events
        self.concurrency = concurrency
        self._queue: asyncio.Queue[tuple[IncomingEvent, asyncio.Future[bool]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="group-commit")
        self.batches = 0
        self.committed = 0

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        while not self._queue.empty() or self._in_flight:
            await asyncio.sleep(0.005)
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        self._thread.shutdown(wait=True)

    async def submit(self, event: IncomingEvent) -> bool:
        """True when stored now, False when it duplicates an event stored before."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.concurrency)
        while True:
            first = await self._queue.get()
            await slots.acquire()  # while every committer is busy, the queue keeps filling
            batch = [first]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            task = loop.create_task(self._commit_and_answer(batch, slots))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _commit_and_answer(self, batch: list[tuple[IncomingEvent, asyncio.Future[bool]]],
                                 slots: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(self._thread, _commit, [e for e, _ in batch])
        except Exception as exc:
            logger.error("could not commit %d inbound event(s): %s", len(batch), type(exc).__name__)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            slots.release()
        self.batches += 1
        self.committed += len(new)
        first_of: dict[tuple[str, str], asyncio.Future[bool]] = {}
        for event, future in batch:
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


def _commit(events: list[IncomingEvent]) -> set[tuple[str, str]]:
    """One INSERT for the batch, built by hand: this runs per webhook, and the query builder's
    per-row work showed in profiles. Returns the (source, event_id) pairs stored now."""
    now = utcnow()
    unique: dict[tuple[str, str], IncomingEvent] = {}
    for event in events:
        unique.setdefault((event.source, event.event_id), event)
    values = [(e.source, e.event_id, e.type, e.payload, e.status, e.error, now) for e in unique.values()]
    with db_session(), database.atomic():
        if is_postgres():
            from psycopg2.extras import execute_values

            cursor = database.cursor()
            inserted = execute_values(
                cursor, f"INSERT INTO inbound_event ({_COLUMNS}) VALUES %s "
                        "ON CONFLICT (source, event_id) DO NOTHING RETURNING source, event_id",
                values, page_size=len(values), fetch=True)
        else:
            placeholders = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(values))
            params = [v if i != 6 else str(v) for row in values for i, v in enumerate(row)]
            inserted = database.execute_sql(
                f"INSERT OR IGNORE INTO inbound_event ({_COLUMNS}) VALUES {placeholders} RETURNING source, event_id",
                params).fetchall()
    return {(source, event_id) for source, event_id in inserted}
