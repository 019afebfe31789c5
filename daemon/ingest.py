"""Group commit of inbound events: durable before the 2xx, without a transaction per request.

Request handlers hand their verified event to ``GroupCommitter.submit`` and await it. One writer
task takes whatever has queued up (up to ``max_batch``), writes it in ONE transaction on its own
thread — ``INSERT ... ON CONFLICT (source, event_id) DO NOTHING RETURNING`` — and answers every
waiting request: new (202) or a duplicate of an event already stored (200). While a batch commits,
the next one gathers, so the batch size follows the load: one event at a time when idle, hundreds
under a burst. Repeats inside one batch are answered from the first occurrence.

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

from db.database import database, db_session, rows
from db.models import InboundEvent, utcnow

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
    def __init__(self, max_batch: int = 1000, on_commit: Callable[[int], None] | None = None) -> None:
        self.max_batch = max_batch
        self.on_commit = on_commit  # called (in the event loop) with the number of new events
        self._queue: asyncio.Queue[tuple[IncomingEvent, asyncio.Future[bool]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        # one thread: the commits are sequential anyway, and it keeps one database connection
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-commit")
        self.batches = 0
        self.committed = 0

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        while not self._queue.empty():
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
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                new = await loop.run_in_executor(self._thread, _commit, [e for e, _ in batch])
            except Exception as exc:
                logger.error("could not commit %d inbound event(s): %s", len(batch), type(exc).__name__)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
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


def _commit(events: list[IncomingEvent]) -> set[tuple[str, str]]:
    now = utcnow()
    unique: dict[tuple[str, str], IncomingEvent] = {}
    for event in events:
        unique.setdefault((event.source, event.event_id), event)
    with db_session(), database.atomic():
        inserted = rows(InboundEvent.insert_many([
            {"source": e.source, "event_id": e.event_id, "type": e.type, "payload": e.payload, "status": e.status,
             "error": e.error, "received_at": now} for e in unique.values()])
            .on_conflict_ignore().returning(InboundEvent.source, InboundEvent.event_id))
    return {(source, event_id) for source, event_id in inserted}
